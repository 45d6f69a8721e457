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
