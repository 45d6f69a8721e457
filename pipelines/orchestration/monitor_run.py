"""What one monitor run looks at: the batches that landed since the last run (named by the triggering Asset
events, never "whatever is latest") and the slice of live traffic inside the run's time window.

`build_data_window` turns landed files of any declared format into one JSONL of corpus-shaped texts (instruction
rows become "prompt\\n\\nresponse", as ingest composes them), so the drift stage reads one format.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypedDict

import yaml

from pipelines.config import StageConfig
from pipelines.data.landing import MANIFEST, read_records, root_path, run_stamp
from pipelines.data.source_config import Source
from pipelines.io import write_text


class MonitorConfig(StageConfig):
    """The `monitor` section of params.yaml."""

    schedule: str  # cron of the monitor DAG
    request_window_minutes: int  # live traffic looked at per scheduled run
    reports_dir: str  # one folder per monitor run


class DataWindow(TypedDict):
    path: str | None  # JSONL of {"text", "source"}; None when nothing landed
    rows: int
    files: list[str]
    skipped: list[dict[str, str]]  # landed files that could not be read, with the reason


def _compose(row: dict[str, Any], source: Source) -> str | None:
    fields = source.fields
    if fields is None:
        return None
    if source.kind == "instruction":
        prompt = "\n\n".join(str(row[f]).strip() for f in fields.prompt or [] if row.get(f))
        response = str(row.get(fields.response) or "").strip()
        return f"{prompt}\n\n{response}".strip() or None
    value = row.get(fields.text or "text")
    return str(value).strip() if value else None


def build_data_window(landed_dir: str, files: list[str], out_path: str | Path) -> DataWindow:
    """One JSONL window of the landed `files` (paths relative to `landed_dir`, as the ingest DAG's Asset event
    lists them); rows without text are left out and counted."""
    landed = root_path(landed_dir)
    texts: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    for rel in files:
        path = landed / rel
        folder = path.parent
        try:
            declared = yaml.safe_load((folder / MANIFEST).read_text(encoding="utf-8")) or {}
            source = Source(name=folder.name, path=str(path), **{k: v for k, v in declared.items()
                                                                 if k not in ("name", "path")})
            rows = read_records(path, source.format, 1.0)
        except (OSError, ValueError) as exc:
            skipped.append({"file": rel, "reason": str(exc)})
            continue
        for row in rows:
            text = _compose(row, source)
            if text:
                texts.append({"text": text, "source": source.name})
    if not texts:
        return DataWindow(path=None, rows=0, files=list(files), skipped=skipped)
    out = root_path(out_path)
    write_text(out, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts))
    return DataWindow(path=str(out), rows=len(texts), files=list(files), skipped=skipped)


# --- one monitor run (the monitor DAG's tasks) -----------------------------------------------------------------

class Window(TypedDict):
    run_dir: str
    data: DataWindow
    request_log: str
    since: str
    until: str


def collect_window(*, run_id: str, until: datetime, landed_files: list[str]) -> Window:
    """The run's window: the landed files its Asset events named, and live traffic in the last
    `request_window_minutes` before the run's own time (not the clock's: a rerun sees the same window)."""
    from pipelines.config import load_params, parse_section
    from pipelines.data.landing import LandingConfig

    params = load_params()
    monitor = parse_section(params, "monitor", MonitorConfig)
    landing = parse_section(params, "landing", LandingConfig)
    run_dir = root_path(monitor.reports_dir) / run_stamp(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    until = until if until.tzinfo else until.replace(tzinfo=timezone.utc)
    since = until - timedelta(minutes=monitor.request_window_minutes)
    data = build_data_window(landing.landed_dir, sorted(set(landed_files)), run_dir / "data_window.jsonl")
    return Window(run_dir=str(run_dir), data=data, request_log=str(root_path(params["serve"]["request_log"])),
                  since=since.isoformat(), until=until.isoformat())
