"""`push` / `pull` with the checks DVC leaves out: the remote is reachable, the credentials work and the bucket
exists (one HeadBucket, seconds), and every cache object about to travel still matches its hash. Any failure raises
`RemoteError` before DVC transfers or checks out anything, so the workspace and the cache stay as they were.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from pipelines.versioning.cache import verify_cache
from pipelines.versioning.remote import RemoteError, check_remote


class CacheCorrupted(RemoteError):
    """The local cache holds objects whose content does not match their hash (or that are missing, for push)."""

    def __init__(self, action: str, problems):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p.describe()}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        fixes = []
        if any(p.kind in {"corrupted", "unreadable"} for p in self.problems):
            fixes.append("`llmops data verify --quarantine` moves corrupted objects to .dvc/tmp/corrupted/; then "
                         "`dvc commit -f <path>` re-caches an intact workspace copy, or `llmops data pull` fetches "
                         "a good copy from the remote")
        if any(p.kind == "missing" for p in self.problems):
            fixes.append("`dvc commit -f <path>` (or `dvc repro`) puts missing objects back into the cache")
        super().__init__(f"{action} stopped: {len(self.problems)} problem(s) in the local DVC cache; nothing was "
                         f"transferred and no workspace file was changed\n{lines}{more}\nfix: " + "; ".join(fixes))


def _dvc_error(action: str, name: str, exc: Exception) -> RemoteError:
    return RemoteError(f"dvc {action} -r {name} failed: {exc}")


def push(root: Path, remote: Optional[str] = None, targets: Optional[Iterable[str]] = None,
         jobs: Optional[int] = None) -> dict:
    root = Path(root)
    targets = list(targets) if targets else None
    name, section = check_remote(root, remote, for_pull=False)
    problems = verify_cache(root, targets)
    if problems:
        raise CacheCorrupted("push", problems)
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            pushed = repo.push(targets=targets, remote=name, jobs=jobs)
    except DvcException as exc:
        raise _dvc_error("push", name, exc) from None
    return {"remote": name, "url": section.get("url"), "pushed": pushed}


def pull(root: Path, remote: Optional[str] = None, targets: Optional[Iterable[str]] = None,
         jobs: Optional[int] = None) -> dict:
    root = Path(root)
    targets = list(targets) if targets else None
    name, section = check_remote(root, remote, for_pull=True)
    problems = verify_cache(root, targets, missing_ok=True)
    if problems:
        raise CacheCorrupted("pull", problems)
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            stats = repo.pull(targets=targets, remote=name, jobs=jobs)
    except DvcException as exc:
        raise _dvc_error("pull", name, exc) from None
    return {"remote": name, "url": section.get("url"),
            **{k: (len(v) if isinstance(v, (list, tuple, set)) else v) for k, v in (stats or {}).items()}}
