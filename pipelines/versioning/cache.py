"""Integrity of the local DVC cache behind the tracked outputs.

DVC 3.67 has no `fsck`. When a cache object's content no longer matches its hash, `dvc status` reports the output
as "not in cache" and deletes the object; `dvc push` deletes it too, warns "Some of the cache files do not exist
neither locally nor on remote", skips it and the directory listing, and exits 0 ("N files pushed"), so the remote
ends up incomplete (measured here). This module checks every cached object (the `.dir` listing
and each file in it) against its md5 before a push or pull, names the workspace file behind a bad object, and
changes nothing unless asked to move corrupted objects aside (`quarantine`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional


@dataclass(frozen=True)
class CacheObject:
    path: str          # workspace path of the file (or directory listing) it stands for
    oid: str           # md5, with `.dir` for a directory listing
    cache_path: str    # where DVC keeps it


@dataclass(frozen=True)
class CacheProblem:
    kind: str          # "missing" | "corrupted" | "unreadable"
    path: str
    oid: str
    cache_path: str
    actual: Optional[str] = None

    def describe(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: not in the local cache ({self.cache_path})"
        if self.kind == "unreadable":
            return f"{self.path}: cache object {self.cache_path} is not a valid directory listing"
        return (f"{self.path}: cache object {self.cache_path} is corrupted (content md5 {self.actual}, "
                f"expected {self.oid.removesuffix('.dir')})")

    def as_dict(self) -> dict:
        return asdict(self)


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_file(cache_dir: Path, oid: str) -> Path:
    """DVC 3 layout: <cache>/files/md5/<2 chars>/<rest>."""
    return cache_dir / "files" / "md5" / oid[:2] / oid[2:]


def tracked_objects(root: Path, targets: Optional[Iterable[str]] = None) -> tuple[Path, list[tuple[str, str]]]:
    """(cache dir, [(out path, oid)]) for every cached, md5-hashed output of dvc.yaml stages and .dvc files."""
    from dvc.repo import Repo

    wanted = {str(Path(t)) for t in targets} if targets else None
    outs: list[tuple[str, str]] = []
    with Repo(str(root)) as repo:
        cache_dir = Path(repo.cache.local.path).parent.parent  # <cache>/files/md5 -> <cache>
        for out in repo.index.outs:
            if not out.use_cache or not out.hash_info or not out.hash_info.value:
                continue
            if out.hash_info.name != "md5":   # DVC 2.x `md5-dos2unix` objects live in the legacy layout
                continue
            rel = os.path.relpath(out.fs_path, repo.root_dir)
            if wanted and not any(rel == w or rel.startswith(w.rstrip("/") + "/") for w in wanted):
                continue
            outs.append((rel, out.hash_info.value))
    return cache_dir, outs


def expand(cache_dir: Path, outs: list[tuple[str, str]]) -> tuple[list[CacheObject], list[CacheProblem]]:
    """Every object behind the outputs (directory listings expanded); unreadable listings are problems."""
    objects: list[CacheObject] = []
    problems: list[CacheProblem] = []
    for path, oid in outs:
        cpath = cache_file(cache_dir, oid)
        objects.append(CacheObject(path, oid, str(cpath)))
        if not oid.endswith(".dir") or not cpath.exists():
            continue
        try:
            entries = json.loads(cpath.read_text())
        except (OSError, ValueError):
            problems.append(CacheProblem("unreadable", path, oid, str(cpath)))
            continue
        for entry in entries:
            sub = entry.get("md5")
            if sub:
                objects.append(CacheObject(f"{path}/{entry.get('relpath')}", sub, str(cache_file(cache_dir, sub))))
    return objects, problems


def verify_cache(root: Path, targets: Optional[Iterable[str]] = None,
                 missing_ok: bool = False) -> list[CacheProblem]:
    """Hash every cache object behind the tracked outputs; return the missing (unless missing_ok) and corrupted."""
    cache_dir, outs = tracked_objects(Path(root), targets)
    objects, problems = expand(cache_dir, outs)
    seen: set[str] = set()
    for obj in objects:
        if obj.cache_path in seen:
            continue
        seen.add(obj.cache_path)
        cpath = Path(obj.cache_path)
        if not cpath.exists():
            if not missing_ok:
                problems.append(CacheProblem("missing", obj.path, obj.oid, obj.cache_path))
            continue
        actual = md5_file(cpath)
        if actual != obj.oid.removesuffix(".dir"):
            problems.append(CacheProblem("corrupted", obj.path, obj.oid, obj.cache_path, actual))
    return problems


def quarantine(root: Path, problems: Iterable[CacheProblem]) -> list[str]:
    """Move corrupted cache objects to .dvc/tmp/corrupted/ (kept for inspection) so a pull fetches good copies.

    Workspace files are not touched."""
    dest = Path(root) / ".dvc" / "tmp" / "corrupted"
    moved = []
    for p in problems:
        if p.kind not in {"corrupted", "unreadable"} or not Path(p.cache_path).exists():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / p.oid
        shutil.move(p.cache_path, target)
        moved.append(str(target))
    return moved
