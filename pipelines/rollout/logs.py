"""The request and feedback logs of every replica, as the rollout analysis reads them.

A log location (`rollout.analysis.request_log` / `feedback_log`) is one of:
- a file: the file and its rotated siblings (`<stem>.<000001..>.jsonl`, pipelines/serving/request_log.py);
- a folder: every `*.jsonl` under it (one file per replica, `<replica>.jsonl`, or a shared sink); when it holds
  hour partitions (`dt=YYYY-MM-DD/hour=HH/<replica>.jsonl`) only the partitions of the window are read;
- `s3://bucket/prefix`: the same hour partitions in an object store (pipelines/storage: endpoint and credentials
  from the environment); only the window's partitions are listed and read.

Lines outside [since, until), or that are not JSON objects with a parseable `ts`, are counted and skipped.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from pipelines.monitoring.windows import _rotated_request_logs, parse_ts

PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
HOUR = re.compile(r"^hour=(\d{2})$")


def partition_key(prefix: str, ts: datetime, replica: str) -> str:
    """`<prefix>/dt=YYYY-MM-DD/hour=HH/<replica>.jsonl` for a line logged at `ts` (UTC) by `replica`; the name
    keeps letters, digits, '.', '-' and '_' of the replica (hostname:pid -> hostname_pid)."""
    ts = ts.astimezone(timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", replica)
    return f"{prefix.rstrip('/')}/dt={ts:%Y-%m-%d}/hour={ts:%H}/{safe}.jsonl"


def hours(since: datetime, until: datetime) -> list[datetime]:
    """The UTC hours (truncated) that [since, until) touches."""
    start = since.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    out = []
    while start < until:
        out.append(start)
        start += timedelta(hours=1)
    return out


def _in_window_partition(dt: str, hour: str, since: datetime, until: datetime) -> bool:
    start = datetime.strptime(f"{dt} {hour}", "%Y-%m-%d %H").replace(tzinfo=timezone.utc)
    return start < until and start + timedelta(hours=1) > since


def log_files(path: Path) -> list[Path]:
    """A log file's rotated siblings (oldest first), then the live file (pipelines/serving/request_log.py's naming;
    read through monitoring, so this domain package does not import serving, which imports it)."""
    return _rotated_request_logs(path) + ([path] if path.exists() else [])


def local_files(path: str | Path, since: datetime, until: datetime) -> list[Path]:
    root = Path(path)
    if not root.is_dir():
        return log_files(root)
    parts = [p for p in root.iterdir() if p.is_dir() and PARTITION.match(p.name)]
    if not parts:
        return sorted(root.rglob("*.jsonl"))
    files: list[Path] = sorted(root.glob("*.jsonl"))  # a live, not yet partitioned file next to the partitions
    for day in sorted(parts):
        for hour_dir in sorted(p for p in day.iterdir() if p.is_dir() and HOUR.match(p.name)):
            if _in_window_partition(PARTITION.match(day.name).group(1), HOUR.match(hour_dir.name).group(1),
                                    since, until):
                files += sorted(hour_dir.rglob("*.jsonl"))
    return files


def s3_keys(client, uri: str, since: datetime, until: datetime) -> tuple[str, list[str]]:
    from pipelines.storage.s3 import split_uri

    bucket, prefix = split_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    keys: list[str] = []
    for hour in hours(since, until):
        part = f"{prefix}dt={hour:%Y-%m-%d}/hour={hour:%H}/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=part):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".jsonl")]
    return bucket, sorted(keys)


def _lines(text: str) -> Iterable[str]:
    return (line for line in text.splitlines() if line.strip())


def read_records(location: str, since: datetime, until: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records with since <= ts < until, accounting {files, lines, records, rejected, outside_window})."""
    acc: dict[str, Any] = {"location": location, "files": [], "lines": 0, "records": 0, "rejected": 0,
                           "outside_window": 0}
    records: list[dict[str, Any]] = []
    sources: list[tuple[str, str]] = []
    if location.startswith(("s3://", "s3a://")):
        import boto3

        from pipelines.storage.s3 import endpoint_url

        client = boto3.client("s3", endpoint_url=endpoint_url())
        bucket, keys = s3_keys(client, location, since, until)
        for key in keys:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", "replace")
            sources.append((f"s3://{bucket}/{key}", body))
    else:
        from pipelines.config import project_root

        path = Path(location)
        path = path if path.is_absolute() else project_root() / path
        for file in local_files(path, since, until):
            try:
                sources.append((str(file), file.read_text(encoding="utf-8", errors="replace")))
            except FileNotFoundError:  # rotated away between listing and reading: its new name is listed next time
                continue
    for name, text in sources:
        acc["files"].append(name)
        for raw in _lines(text):
            acc["lines"] += 1
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                acc["rejected"] += 1
                continue
            ts = parse_ts(rec.get("ts")) if isinstance(rec, dict) else None
            if ts is None:
                acc["rejected"] += 1
                continue
            if not since <= ts < until:
                acc["outside_window"] += 1
                continue
            records.append(rec)
    acc["records"] = len(records)
    return records, acc
