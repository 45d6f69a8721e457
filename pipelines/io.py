"""Atomic writes: a killed stage never leaves half an output, and a rerun replaces the old one whole.

Every writer here first sweeps the stale temp siblings of its output (`sweep_stale`): a writer killed with
SIGKILL (or by the OOM killer) cannot clean up, and its `.corpus.tmp-*` directory would otherwise stay forever.
A temp name carries the writer's host and pid (`.NAME.tmp-HOST-PID-RANDOM`), so a sweep removes only the temps of
writers that are gone, never those of a writer still running on this host.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TMP_TAIL = re.compile(r"([0-9a-f]{6})-(\d+)-[0-9a-f]{8}")
# A temp whose writer cannot be checked (another host, or named before temps carried a pid) is stale after this.
FOREIGN_STALE_AFTER_S = 3600.0


def tmp_sibling(path: Path) -> Path:
    """A fresh temp name next to `path` that `sweep_stale` can attribute to this process."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_tmp_sibling = tmp_sibling


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale(path: str | Path) -> list[Path]:
    """Remove the temp siblings of `path` (`.NAME.tmp-*`) that a dead writer left behind; returns them.

    A temp of this host is stale when its pid is gone; one of another host, or with an older name (no pid), when
    it is older than FOREIGN_STALE_AFTER_S. A live writer's temp (this host, pid alive) is never touched."""
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except FileNotFoundError:
        return []
    removed = []
    for tmp in siblings:
        m = _TMP_TAIL.fullmatch(tmp.name[len(prefix):])
        if m and m.group(1) == _HOST:
            if _pid_alive(int(m.group(2))):
                continue
        else:
            try:
                if time.time() - tmp.lstat().st_mtime < FOREIGN_STALE_AFTER_S:
                    continue
            except FileNotFoundError:
                continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        removed.append(tmp)
    return removed


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON through a temp file and rename, so readers see the old or the new file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = _tmp_sibling(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = _tmp_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temp directory into place (the old one is removed only after the new one is complete)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = _tmp_sibling(final)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory next to `path`; on success it replaces `path`, on error it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a not-yet-existing temp path next to `path` for engines that create the output themselves
    (Spark writes a directory of part files); it replaces `path` on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
    if tmp.is_dir():
        replace_dir(tmp, final)
    else:
        os.replace(tmp, final)
