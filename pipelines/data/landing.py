"""The landing inbox: new raw data that producers drop for the platform, checked, approved and moved into
`data/landed/`, where ingest reads it as sources.

Layout (one folder per source, a manifest beside the data, a flag file once a drop is complete):

    <inbox>/<source>/source.yaml      kind, format, licence, pii, fields (as an `ingest.sources` entry, minus
                                      name and path: the folder names the source, its files are the data)
    <inbox>/<source>/*.jsonl|json|csv|parquet
    <inbox>/_READY                    written last; Airflow's AssetWatcher fires on it (and deletes it)

`scan_inbox` parses every file and refuses, with a reason, what must never be ingested: an unreadable or
corrupt file, a source without a manifest or a licence. The rest is a batch; a source seen for the first time
(or with another licence than the one approved) needs a person's approval, which shows its licence and a PII scan
summary. `accept` moves approved batches into `<landed_dir>/<source>/` (atomic renames) and records the approval
in `<landed_dir>/approvals.json`; refused files go to `<rejects_dir>/<stamp>/` with a `reason.json`.

Landed data is DVC-tracked (`dvc_track`): `accept` runs `dvc add` on each landed source folder and on
approvals.json when the landed folder is inside a DVC repository, so `llmops data push` / `make data-push` carry
the data a retrain was trained on, and a clone of the commit (with its `<landed_dir>/*.dvc` files) pulls it back
and reproduces the retrain. Commit those `.dvc` files with the dvc.lock of the retrain (DVC stages them in git).

No Airflow here: the ingest DAG wires these functions; the CLI and tests call them directly.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, TypedDict

import yaml
from pydantic import ValidationError

from pipelines.config import StageConfig, project_root
from pipelines.data import pii
from pipelines.data.source_config import Source
from pipelines.io import read_json, write_json

MANIFEST = "source.yaml"
APPROVALS = "approvals.json"
DATA_SUFFIXES = {"jsonl": "jsonl", "json": "json", "csv": "csv", "parquet": "parquet"}


class LandingConfig(StageConfig):
    """The `landing` section of params.yaml."""

    inbox: str  # where producers drop data (a local folder; the S3 watcher copies s3:// drops here)
    s3_inbox: str | None  # s3://bucket/prefix watched instead of the local folder (null: local only)
    flag_file: str  # written last by the producer; the AssetWatcher fires on it and deletes it
    poke_interval_s: float  # how often the triggerer looks for the flag
    landed_dir: str  # approved batches, one folder per source: ingest reads them as sources
    rejects_dir: str  # refused files, with a reason.json each
    pii_scan_rows: int  # rows per source scanned for the approval's PII summary
    max_bad_line_fraction: float  # a JSONL file with more unparsable lines than this is refused as corrupt
    dvc_track: bool  # `dvc add` each landed source folder and approvals.json (when inside a DVC repository)


class RefusedFile(TypedDict):
    source: str
    file: str
    reason: str


class Batch(TypedDict):
    source: str
    files: list[str]  # inbox-relative paths
    rows: int
    licence: str
    kind: str
    pii_policy: str
    pii_summary: dict[str, int]  # entity type -> spans found in the scanned rows
    pii_rows_scanned: int
    approved: bool  # True when this source (with this licence) was approved before
    manifest: dict[str, Any]


class InboxScan(TypedDict):
    inbox: str
    batches: list[Batch]
    refused: list[RefusedFile]
    needs_approval: list[str]  # source names
    approval_body: str  # Markdown for the ApprovalOperator


class AcceptReport(TypedDict):
    accepted: list[dict[str, Any]]  # {source, files (landed paths), rows}
    rows: int
    refused: list[RefusedFile]
    dvc_tracked: list[str]  # the .dvc files written (repository-relative); empty when not in a DVC repository


def root_path(path: str | Path) -> Path:
    """A params path: absolute as given, else from the project root."""
    p = Path(path)
    return p if p.is_absolute() else project_root() / p


# --- reading a drop -----------------------------------------------------------------------------------------

def read_records(path: Path, fmt: str, max_bad_line_fraction: float) -> list[dict[str, Any]]:
    """Every record of a data file, or ValueError with the reason the file is refused as corrupt.
    Single bad lines of a JSONL file are left to ingest, which quarantines them by line."""
    raw = path.read_bytes()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(raw)).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a broken footer
            raise ValueError(f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError("a JSON source must be an array of objects")
        return data
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    rows, bad, first_bad = [], 0, None
    lines = [line for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
            first_bad = first_bad or number
    if lines and bad / len(lines) > max_bad_line_fraction:
        raise ValueError(f"{bad} of {len(lines)} lines are not JSON objects (first: line {first_bad})")
    return rows


def _manifest(folder: Path) -> tuple[Source | None, dict[str, Any], str | None]:
    """The source declared by `folder/source.yaml`, or the reason it cannot be ingested."""
    path = folder / MANIFEST
    if not path.exists():
        return None, {}, f"no {MANIFEST}: a source must declare its kind, format, licence and PII policy"
    try:
        declared = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        return None, {}, f"{MANIFEST} is not valid YAML: {exc}"
    if not isinstance(declared, dict):
        return None, {}, f"{MANIFEST} must be a mapping"
    declared = {k: v for k, v in declared.items() if k not in ("name", "path")}
    try:
        fmt = declared.get("format", "jsonl")
        source = Source(name=folder.name, path=f"{folder.name}/*.{fmt}", **declared)
    except ValidationError as exc:
        return None, declared, "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return source, declared, None


def _pii_summary(rows: list[dict[str, Any]], source: Source, limit: int) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    scanned = rows[:limit]
    for row in scanned:
        for name in source.fields.raw_fields() if source.fields else []:
            value = row.get(name)
            if isinstance(value, str):
                for span in pii.detect(value):
                    counts[span.entity] = counts.get(span.entity, 0) + 1
    return dict(sorted(counts.items())), len(scanned)


def load_approvals(landed_dir: str | Path) -> dict[str, dict[str, Any]]:
    path = root_path(landed_dir) / APPROVALS
    return read_json(path) if path.exists() else {}


def _is_approved(approvals: dict[str, dict[str, Any]], source: Source) -> bool:
    return approvals.get(source.name, {}).get("licence") == source.licence


def scan_inbox(cfg: LandingConfig) -> InboxScan:
    """What is in the inbox: batches ready to accept (approved or awaiting approval) and files refused."""
    inbox = root_path(cfg.inbox)
    approvals = load_approvals(cfg.landed_dir)
    batches: list[Batch] = []
    refused: list[RefusedFile] = []
    folders = sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith(".")) if inbox.exists() else []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
        if not files:
            continue
        source, declared, problem = _manifest(folder)
        if problem:
            refused += [RefusedFile(source=folder.name, file=str(f.relative_to(inbox)), reason=problem) for f in files]
            continue
        rows: list[dict[str, Any]] = []
        good: list[str] = []
        for f in files:
            suffix = f.name.rsplit(".", 1)[-1].lower()
            if DATA_SUFFIXES.get(suffix) != source.format:
                refused.append(RefusedFile(source=source.name, file=str(f.relative_to(inbox)),
                                           reason=f"file type .{suffix} does not match the declared format "
                                                  f"{source.format}"))
                continue
            try:
                records = read_records(f, source.format, cfg.max_bad_line_fraction)
            except ValueError as exc:
                refused.append(RefusedFile(source=source.name, file=str(f.relative_to(inbox)), reason=str(exc)))
                continue
            if not records:
                refused.append(RefusedFile(source=source.name, file=str(f.relative_to(inbox)), reason="no records"))
                continue
            rows += records
            good.append(str(f.relative_to(inbox)))
        if not good:
            continue
        summary, scanned = _pii_summary(rows, source, cfg.pii_scan_rows)
        batches.append(Batch(source=source.name, files=good, rows=len(rows), licence=source.licence,
                             kind=source.kind, pii_policy=source.pii, pii_summary=summary, pii_rows_scanned=scanned,
                             approved=_is_approved(approvals, source), manifest=declared))
    needs = [b["source"] for b in batches if not b["approved"]]
    return InboxScan(inbox=str(inbox), batches=batches, refused=refused, needs_approval=needs,
                     approval_body=approval_body(batches, refused))


def approval_body(batches: list[Batch], refused: list[RefusedFile]) -> str:
    """What a person must see before a new source enters the corpus: its licence and what PII it holds."""
    lines = ["### New data sources waiting for approval", ""]
    new = [b for b in batches if not b["approved"]]
    for b in new:
        found = ", ".join(f"{k}: {v}" for k, v in b["pii_summary"].items()) or "none found"
        lines += [f"**{b['source']}**: {b['rows']} rows in {len(b['files'])} file(s), kind `{b['kind']}`",
                  f"- licence: **{b['licence']}**",
                  f"- PII policy: `{b['pii_policy']}`; PII in {b['pii_rows_scanned']} scanned rows: {found}", ""]
    if not new:
        lines.append("(no new sources)")
    if refused:
        lines += ["", f"{len(refused)} file(s) refused and moved to rejects:"]
        lines += [f"- `{r['file']}`: {r['reason']}" for r in refused]
    return "\n".join(lines)


# --- moving a drop ------------------------------------------------------------------------------------------

def run_stamp(run_id: str) -> str:
    """An Airflow run id as a folder name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)[:80] or str(int(time.time()))


def reject(cfg: LandingConfig, refused: list[RefusedFile], run_id: str) -> list[RefusedFile]:
    """Move refused files out of the inbox into rejects, each with its reason (so the next drop starts clean)."""
    inbox = root_path(cfg.inbox)
    dest_root = root_path(cfg.rejects_dir) / run_stamp(run_id)
    moved = []
    for item in refused:
        src = inbox / item["file"]
        if not src.exists():
            continue
        dest = dest_root / item["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), dest)
        moved.append(item)
    if moved:
        write_json(dest_root / "reason.json", moved)
    return moved


def accept(cfg: LandingConfig, scan: InboxScan, *, run_id: str, approved_by: str | None,
           approved_sources: list[str] | None = None) -> AcceptReport:
    """Move the batches of approved sources into the landed folder and record their approval.

    `approved_sources`: the new sources a person approved in this run (None: none). Batches of sources that are
    neither approved before nor now stay in the inbox for a later decision. Idempotent: a retried task finds the
    files already moved and reports them again."""
    inbox = root_path(cfg.inbox)
    landed = root_path(cfg.landed_dir)
    approvals = load_approvals(cfg.landed_dir)
    now_ok = set(approved_sources or [])
    accepted = []
    stamp = run_stamp(run_id)
    for batch in scan["batches"]:
        if not (batch["approved"] or batch["source"] in now_ok):
            continue
        folder = landed / batch["source"]
        folder.mkdir(parents=True, exist_ok=True)
        moved = []
        for rel in batch["files"]:
            src = inbox / rel
            dest = folder / f"{stamp}__{Path(rel).name}"
            if src.exists():
                tmp = folder / f".{dest.name}.tmp"
                shutil.copy2(src, tmp)
                os.replace(tmp, dest)  # readers (ingest) see the whole file or none
                src.unlink()
            if dest.exists():
                moved.append(str(dest.relative_to(landed)))
        manifest = {**batch["manifest"], "licence": batch["licence"]}
        (folder / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=True), encoding="utf-8")
        if not batch["approved"]:
            approvals[batch["source"]] = {"licence": batch["licence"], "approved_by": approved_by,
                                          "approved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "run_id": run_id, "pii_summary": batch["pii_summary"]}
        accepted.append({"source": batch["source"], "files": moved, "rows": batch["rows"]})
    tracked: list[str] = []
    if accepted:
        write_json(landed / APPROVALS, approvals)
        if cfg.dvc_track:
            tracked = track_landed(landed, [a["source"] for a in accepted])
    refused = reject(cfg, scan["refused"], run_id)
    return AcceptReport(accepted=accepted, rows=sum(a["rows"] for a in accepted), refused=refused,
                        dvc_tracked=tracked)


def dvc_root(path: Path) -> Path | None:
    """The DVC repository `path` is in (the nearest folder above it with a `.dvc/` directory), or None."""
    for folder in (path.resolve(), *path.resolve().parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def track_landed(landed: Path, sources: list[str], *, attempts: int = 30) -> list[str]:
    """`dvc add` the landed folders of `sources` and approvals.json: their content goes into the DVC cache (and
    with `llmops data push`, the remote), and `<landed_dir>/<source>.dvc` records it for git. Nothing happens
    outside a DVC repository. Retries while another DVC command (a `dvc repro`) holds the repository lock."""
    root = dvc_root(landed)
    if root is None:
        return []
    from dvc.lock import LockError
    from dvc.repo import Repo

    landed = landed.resolve()
    paths = [landed / name for name in sources if (landed / name).is_dir()]
    if (landed / APPROVALS).exists():
        paths.append(landed / APPROVALS)
    for attempt in range(attempts):
        try:
            with Repo(str(root)) as repo:
                repo.add([str(p) for p in paths])  # absolute: DVC resolves relative targets against the cwd
            break
        except LockError:
            if attempt == attempts - 1:
                raise
            time.sleep(2)
    return [f"{p.relative_to(root)}.dvc" for p in paths]


# --- what ingest and validation read ------------------------------------------------------------------------

def landed_sources(landed_dir: str | Path) -> list[Source]:
    """The approved landed sources as `ingest.sources` entries (path: every data file of their folder)."""
    landed = root_path(landed_dir)
    approvals = load_approvals(landed_dir)
    sources = []
    for folder in sorted(p for p in landed.iterdir() if p.is_dir()) if landed.exists() else []:
        if folder.name not in approvals or not (folder / MANIFEST).exists():
            continue
        declared = yaml.safe_load((folder / MANIFEST).read_text(encoding="utf-8")) or {}
        fmt = declared.get("format", "jsonl")
        if not any(folder.glob(f"*.{fmt}")):
            continue
        rel = Path(landed_dir) / folder.name / f"*.{fmt}"
        sources.append(Source(name=folder.name, path=str(rel), **{k: v for k, v in declared.items()
                                                                   if k not in ("name", "path")}))
    return sources


def allowed_with_landed(values: list[str] | None, landed_dir: str | None, field: str) -> list[str] | None:
    """A validation allow-list (`sources` or `licences`) extended by the approved landed sources: a person
    approved their name and licence at landing, so the contract admits them too. None stays None (any)."""
    if values is None or not landed_dir:
        return values
    extra = [getattr(s, field) for s in landed_sources(landed_dir)]
    return list(dict.fromkeys([*values, *extra]))


def pull_s3_inbox(cfg: LandingConfig) -> list[str]:
    """Move an S3 inbox's objects (`s3_inbox`: s3://bucket/prefix/<source>/...) into the local inbox, so the
    same checks run on them; each object is deleted from S3 only after its local copy is complete."""
    if not cfg.s3_inbox:
        return []
    import boto3

    from pipelines.storage.s3 import endpoint_url, split_uri

    bucket, prefix = split_uri(cfg.s3_inbox)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    s3 = boto3.client("s3", endpoint_url=endpoint_url())
    inbox = root_path(cfg.inbox)
    pulled = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel == cfg.flag_file or rel.endswith("/"):
                continue
            dest = inbox / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            s3.download_file(bucket, obj["Key"], str(tmp))
            os.replace(tmp, dest)
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
            pulled.append(rel)
    return pulled
