"""Atomic writes: a failure mid-write leaves the previous output intact and no temp debris."""
from __future__ import annotations

import json

import pytest

from pipelines.io import atomic_dir, atomic_path, write_json


def test_atomic_dir_replaces_whole_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_path_for_engine_written_dirs_and_json(tmp_path):
    target = tmp_path / "parquet"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0").write_text("x")
    assert (target / "part-0").exists()
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2, "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "parquet"]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_orphans(target) -> dict[str, object]:
    """Temp siblings of `target` as a killed writer leaves them: one of a dead pid (a Spark directory with a part
    file), one of an older naming (no pid) an hour old, one of a live writer (this test's parent process)."""
    import os
    import time

    from pipelines.io import tmp_sibling

    dead = tmp_sibling(target)
    dead = dead.with_name(dead.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    dead.mkdir(parents=True)
    (dead / "part-00000.parquet").write_bytes(b"half written")
    legacy = target.with_name(f".{target.name}.tmp-0badc0de")
    legacy.write_text("old")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    live = tmp_sibling(target)
    live = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{os.getppid()}-"))
    live.mkdir()
    return {"dead": dead, "legacy": legacy, "live": live}


def test_writers_sweep_stale_temps_of_dead_writers_only(tmp_path):
    from pipelines.io import sweep_stale, write_text

    target = tmp_path / "out"
    orphans = make_orphans(target)
    young = target.with_name(f".{target.name}.tmp-1234abcd")  # no pid and recent: maybe another host's writer
    young.write_text("?")
    other = tmp_path / ".outer.tmp-1234abcd"  # another output's temp: not ours to sweep
    other.write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    assert not orphans["dead"].exists() and not orphans["legacy"].exists()
    assert orphans["live"].exists() and young.exists() and other.exists()

    metrics = tmp_path / "m.json"
    orphans = make_orphans(metrics)
    write_json(metrics, {"a": 1})
    assert json.loads(metrics.read_text()) == {"a": 1}
    assert [k for k, p in orphans.items() if p.exists()] == ["live"]
    assert sweep_stale(tmp_path / "missing" / "x") == []
    write_text(tmp_path / "r.txt", "ok")
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" not in p.name) == ["m.json", "out", "r.txt"]
