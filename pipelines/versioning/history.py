"""Every dataset and embedding version the pipeline recorded: the git history of `dvc.lock`.

`versions()` walks `git log -- dvc.lock`; for each commit it reads `dvc.lock` and the stages' metrics files at that
commit (`git show REV:path`) and lists each data output with its DVC hash, file count, size and row count (rows from
the metrics, so no data needs to be present). An uncommitted `dvc.lock` that differs from HEAD shows as `workspace`.

`diff(A, B)` says which outputs changed hash and, for Parquet outputs keyed by `doc_id` (or `chunk_id`), how many
rows were added and removed per `source`, read straight from the local DVC cache objects of both versions. When a
version's data is not in the cache it falls back to the metrics counts and says so.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml

from pipelines.versioning.cache import cache_file

WORKSPACE = "workspace"
LOCK = "dvc.lock"
DATA_PREFIXES = ("data/",)


class VersionError(RuntimeError):
    """A revision or repository state the history cannot be read from."""


def _git(root: Path, *args: str, check: bool = True) -> Optional[str]:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        if check:
            raise VersionError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return None
    return proc.stdout


def file_at(root: Path, rev: str, path: str) -> Optional[str]:
    """Text of `path` (relative to root) at `rev`, or in the working tree for `workspace`; None if absent."""
    if rev == WORKSPACE:
        p = root / path
        return p.read_text() if p.is_file() else None
    return _git(root, "show", f"{rev}:./{path}", check=False)


def lock_outs(lock_text: Optional[str]) -> dict[str, dict[str, Any]]:
    """{out path: {stage, md5, size, nfiles}} from dvc.lock text."""
    if not lock_text:
        return {}
    data = yaml.safe_load(lock_text) or {}
    outs: dict[str, dict[str, Any]] = {}
    for stage, spec in (data.get("stages") or {}).items():
        for out in spec.get("outs") or []:
            if "path" in out:
                outs[out["path"]] = {"stage": stage, "md5": out.get("md5") or out.get("etag") or "",
                                     "size": out.get("size"), "nfiles": out.get("nfiles", 1)}
    return outs


def _is_data(path: str, prefixes: Optional[tuple[str, ...]]) -> bool:
    return prefixes is None or any(path == p.rstrip("/") or path.startswith(p) for p in prefixes)


def _metrics_of_stage(root: Path, rev: str, outs: dict[str, dict[str, Any]], stage: str) -> dict[str, Any]:
    """The stage's JSON outputs outside the data prefixes (its metrics files), merged."""
    merged: dict[str, Any] = {}
    for path, info in outs.items():
        if info["stage"] == stage and path.endswith(".json") and not _is_data(path, DATA_PREFIXES):
            text = file_at(root, rev, path)
            if text:
                try:
                    loaded = json.loads(text)
                except ValueError:
                    continue
                if isinstance(loaded, dict):
                    merged.update(loaded)
    return merged


def _rows_from_metrics(metrics: dict[str, Any], path: str, n_data_outs: int) -> Optional[int]:
    total = metrics.get("total") if isinstance(metrics.get("total"), dict) else {}
    if path == metrics.get("rejects_dir"):
        for value in (metrics.get("rejected"), total.get("rejected"), metrics.get("dropped")):
            if isinstance(value, int):
                return value
        return None
    if path == metrics.get("output_dir") or n_data_outs == 1:
        for value in (metrics.get("count"), metrics.get("out"), total.get("out"), metrics.get("rows")):
            if isinstance(value, int):
                return value
        if isinstance(metrics.get("splits"), dict):
            return sum(v for v in metrics["splits"].values() if isinstance(v, int))
    return None


def _by_source_from_metrics(metrics: dict[str, Any], path: str) -> Optional[dict[str, int]]:
    if path == metrics.get("rejects_dir"):
        return None
    if isinstance(metrics.get("out_by_source"), dict):
        return dict(metrics["out_by_source"])
    if isinstance(metrics.get("sources"), dict) and all(isinstance(v, dict) for v in metrics["sources"].values()):
        counts = {k: v.get("out") for k, v in metrics["sources"].items() if isinstance(v.get("out"), int)}
        return counts or None
    return None


def version_at(root: Path, rev: str, prefixes: Optional[tuple[str, ...]] = DATA_PREFIXES) -> dict[str, Any]:
    """Data outputs of dvc.lock at `rev` with hashes, sizes and metric row counts."""
    outs = lock_outs(file_at(root, rev, LOCK))
    data_outs = {p: o for p, o in outs.items() if _is_data(p, prefixes) and o["md5"]}
    per_stage: dict[str, int] = {}
    for info in data_outs.values():
        per_stage[info["stage"]] = per_stage.get(info["stage"], 0) + 1
    metrics_cache: dict[str, dict[str, Any]] = {}
    listed = []
    for path in sorted(data_outs):
        info = data_outs[path]
        stage = info["stage"]
        if stage not in metrics_cache:
            metrics_cache[stage] = _metrics_of_stage(root, rev, outs, stage)
        metrics = metrics_cache[stage]
        listed.append({"path": path, **info,
                       "rows": _rows_from_metrics(metrics, path, per_stage[stage]),
                       "rows_by_source": _by_source_from_metrics(metrics, path)})
    return {"outs": listed}


def _resolve(root: Path, rev: str) -> dict[str, str]:
    if rev == WORKSPACE:
        return {"rev": WORKSPACE, "commit": WORKSPACE, "short": WORKSPACE, "date": "", "subject": "uncommitted"}
    out = _git(root, "log", "-1", "--format=%H%x1f%h%x1f%cI%x1f%s", rev, "--", check=False)
    if not out:
        raise VersionError(f"unknown revision '{rev}' (a commit, tag, branch, HEAD~N, or 'workspace')")
    commit, short, date, subject = out.strip().split("\x1f", 3)
    return {"rev": rev, "commit": commit, "short": short, "date": date, "subject": subject}


def versions(root: Path, prefixes: Optional[tuple[str, ...]] = DATA_PREFIXES, max_count: int = 50) -> list[dict]:
    """Newest first: one entry per commit that changed dvc.lock (plus `workspace` if it differs from HEAD)."""
    root = Path(root)
    if _git(root, "rev-parse", "--git-dir", check=False) is None:
        raise VersionError(f"{root} is not a git repository")
    log = _git(root, "log", f"--max-count={max_count}", "--format=%H%x1f%h%x1f%cI%x1f%s", "--", LOCK,
               check=False) or ""
    entries = []
    ws_lock = file_at(root, WORKSPACE, LOCK)
    head_lock = file_at(root, "HEAD", LOCK)
    if ws_lock is not None and ws_lock != head_lock:
        entries.append({"commit": WORKSPACE, "short": WORKSPACE, "date": "", "subject": "uncommitted dvc.lock",
                        **version_at(root, WORKSPACE, prefixes)})
    for line in log.splitlines():
        commit, short, date, subject = line.split("\x1f", 3)
        entries.append({"commit": commit, "short": short, "date": date, "subject": subject,
                        **version_at(root, commit, prefixes)})
    return entries


# -- diff -------------------------------------------------------------------------------------------------------

def _cache_dir(root: Path) -> Path:
    try:
        from dvc.config import Config

        conf = Config(dvc_dir=str(root / ".dvc"))
        configured = conf.get("cache", {}).get("dir")
        if configured:
            return Path(configured)
    except Exception:  # a broken config must not hide the history
        pass
    return root / ".dvc" / "cache"


def _parquet_files(root: Path, path: str, oid: str) -> Optional[list[Path]]:
    """Cache paths of the Parquet files of an output version; None when any needed object is not cached."""
    cache = _cache_dir(root)
    obj = cache_file(cache, oid)
    if not obj.exists():
        return None
    if not oid.endswith(".dir"):
        return [obj] if path.endswith(".parquet") else []
    files = []
    for entry in json.loads(obj.read_text()):
        rel = entry.get("relpath", "")
        if rel.endswith(".parquet") and not Path(rel).name.startswith((".", "_")):
            f = cache_file(cache, entry["md5"])
            if not f.exists():
                return None
            files.append(f)
    return files


def _read_keys(files: list[Path]):
    """DataFrame(key, source, is_vector) over the files; None when they carry no row key."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for f in files:
        names = pq.read_schema(f).names
        key = "chunk_id" if "chunk_id" in names else "doc_id" if "doc_id" in names else None
        if key is None:
            return None
        cols = [key] + (["source"] if "source" in names else [])
        df = pq.read_table(f, columns=cols).to_pandas()
        df = df.rename(columns={key: "key"})
        if "source" not in df:
            df["source"] = "-"
        df["vector"] = any(n in names for n in ("vector", "embedding"))
        frames.append(df)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def _row_diff(a, b) -> dict[str, Any]:
    sources = sorted(set(a["source"]) | set(b["source"]))
    per_source = {}
    for s in sources:
        ka = set(a.loc[a["source"] == s, "key"])
        kb = set(b.loc[b["source"] == s, "key"])
        per_source[s] = {"rows_a": len(ka), "rows_b": len(kb), "added": len(kb - ka), "removed": len(ka - kb)}
    ka, kb = set(a["key"]), set(b["key"])
    return {"rows_a": int(len(a)), "rows_b": int(len(b)), "added": len(kb - ka), "removed": len(ka - kb),
            "by_source": per_source}


def diff(root: Path, rev_a: str, rev_b: str, prefixes: Optional[tuple[str, ...]] = DATA_PREFIXES) -> dict[str, Any]:
    root = Path(root)
    a, b = _resolve(root, rev_a), _resolve(root, rev_b)
    va = {o["path"]: o for o in version_at(root, a["commit"], prefixes)["outs"]}
    vb = {o["path"]: o for o in version_at(root, b["commit"], prefixes)["outs"]}
    if not va and not vb:
        raise VersionError(f"no dvc.lock data outputs at {rev_a} or {rev_b}")
    changes = []
    for path in sorted(set(va) | set(vb)):
        oa, ob = va.get(path), vb.get(path)
        status = ("added" if oa is None else "removed" if ob is None
                  else "unchanged" if oa["md5"] == ob["md5"] else "modified")
        change: dict[str, Any] = {"path": path, "status": status,
                                  "md5_a": oa and oa["md5"], "md5_b": ob and ob["md5"],
                                  "rows_a": oa and oa["rows"], "rows_b": ob and ob["rows"]}
        if status != "unchanged":
            fa = _parquet_files(root, path, oa["md5"]) if oa else []
            fb = _parquet_files(root, path, ob["md5"]) if ob else []
            missing = [r["short"] for r, f in ((a, fa), (b, fb)) if f is None]
            if missing:
                change["source_of_counts"] = "metrics"
                change["note"] = (f"data of {', '.join(missing)} not in the local DVC cache (`dvc fetch` at that "
                                  "revision, or `dvc pull --all-commits`): row counts from metrics, no per-row diff")
                ba = oa and oa.get("rows_by_source")
                bb = ob and ob.get("rows_by_source")
                if ba or bb:
                    change["by_source_counts"] = {s: {"rows_a": (ba or {}).get(s), "rows_b": (bb or {}).get(s)}
                                                  for s in sorted(set(ba or {}) | set(bb or {}))}
            else:
                ka = _read_keys(fa) if fa else None
                kb = _read_keys(fb) if fb else None
                if (fa and ka is None) or (fb and kb is None) or (ka is None and kb is None):
                    change["source_of_counts"] = "metrics"
                    change["note"] = "no doc_id/chunk_id column: row counts from metrics"
                else:
                    import pandas as pd

                    empty = pd.DataFrame({"key": [], "source": [], "vector": []})
                    ka = empty if ka is None else ka
                    kb = empty if kb is None else kb
                    change.update(_row_diff(ka, kb))
                    change["source_of_counts"] = "data"
                    change["embeddings"] = bool(ka["vector"].any() or kb["vector"].any())
        changes.append(change)
    return {"a": a, "b": b, "changes": changes}
