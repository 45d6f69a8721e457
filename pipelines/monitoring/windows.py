"""Text windows for drift detection and online evaluation: what is compared with what.

A window is a list of texts plus where they came from and what could not be read. Sources:

- the corpus as Parquet (a file, or a Spark-written directory of part files): the `text` column (or `prompt`);
- landed raw data as JSONL or JSON files (a file, or a folder of them searched recursively): each record's `text`,
  else `prompt`/`instruction` (+ `input`) and `response`/`output`/`completion`/`answer` joined the way ingest joins
  them (`prompt\\n\\nresponse`, pipelines/data/clean.py);
- the serving request log (JSONL, one request per line, `read_request_log`): the logged prompts.

Nothing is lost: a record that cannot be parsed or has no text is counted in `rejected` with its file and line,
never a crash; a missing file is an empty window (the drift decision then says "insufficient_data").
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

PROMPT_KEYS = ("prompt", "instruction", "question")
INPUT_KEYS = ("input", "context")
RESPONSE_KEYS = ("response", "output", "completion", "answer", "chosen")  # chosen: a preference pair (issue 31)
JSON_SUFFIXES = (".jsonl", ".json")
Field = Literal["text", "prompt"]


@dataclass(frozen=True)
class Reject:
    path: str
    line: int | None  # 1-based line of a JSONL file; the record's index in a JSON array; None for a whole file
    reason: str


@dataclass
class TextWindow:
    """Texts to compare, in a stable order; `vectors` (one row per text) is filled by the embedding step."""

    name: str
    texts: list[str]
    kind: str  # corpus | files | request_log | memory
    rejected: list[Reject] = field(default_factory=list)
    records_read: int = 0  # every record seen: len(texts) + len(rejected) + skipped_no_text
    skipped_no_text: int = 0  # records read fine that carry no text of the asked field (e.g. a document's prompt)
    vectors: Any = None  # np.ndarray (n, dim) of unit vectors, or None before embedding
    ids: list[str] | None = None  # one per text where the source has ids (corpus doc_id)

    @property
    def n(self) -> int:
        return len(self.texts)

    def accounting(self) -> dict[str, int]:
        return {"read": self.records_read, "texts": self.n, "rejected": len(self.rejected),
                "no_text": self.skipped_no_text}


def memory_window(name: str, texts: Iterable[str]) -> TextWindow:
    texts = [str(t) for t in texts]
    return TextWindow(name=name, texts=texts, kind="memory", records_read=len(texts))


def record_text(rec: dict[str, Any], which: Field = "text") -> str | None:
    """The text of one raw or corpus record: `text` itself, or prompt (+ input) and response joined as ingest
    does. `which="prompt"`: only the prompt part (what a user would send)."""
    def first(keys: tuple[str, ...]) -> str | None:
        for k in keys:
            v = rec.get(k)
            if isinstance(v, str) and v.strip():
                return v.strip()
        return None

    prompt = first(PROMPT_KEYS)
    extra = first(INPUT_KEYS)
    if prompt and extra:
        prompt = f"{prompt}\n\n{extra}"
    if which == "prompt":
        return prompt
    text = rec.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    response = first(RESPONSE_KEYS)
    if prompt and response:
        return f"{prompt}\n\n{response}"
    return prompt or response


def _json_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in JSON_SUFFIXES
                      and not p.name.startswith((".", "_")))
    return [path]


def _records(path: Path, jsonl: bool | None = None) -> Iterable[tuple[int | None, Any, str | None]]:
    """(line or index, record, error) of a JSONL or JSON file; a JSON array yields one record per element.
    `jsonl`: force the format (None: by suffix, `.json` is one document)."""
    if not (path.suffix != ".json" if jsonl is None else jsonl):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield None, None, f"not valid JSON: {exc}"
            return
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        rows = data if isinstance(data, list) else [data]
        for i, rec in enumerate(rows):
            yield i, rec, None
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8")), None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield lineno, None, f"not valid JSON: {str(exc)[:120]}"


def read_files_window(path: str | Path, which: Field = "text", name: str | None = None) -> TextWindow:
    """A window of JSONL/JSON files (a file or a folder of them); missing path -> empty window."""
    path = Path(path)
    win = TextWindow(name=name or str(path), texts=[], kind="files")
    if not path.exists():
        return win
    for file in _json_files(path):
        for line, rec, error in _records(file):
            win.records_read += 1
            if error is None and not isinstance(rec, dict):
                error = f"record is a {type(rec).__name__}, not an object"
            if error:
                win.rejected.append(Reject(str(file), line, error))
                continue
            text = record_text(rec, which)
            if text:
                win.texts.append(text)
            elif which == "prompt":
                win.skipped_no_text += 1
            else:
                win.rejected.append(Reject(str(file), line, "no text field (text, prompt/instruction, response)"))
    return win


def read_corpus_window(path: str | Path, which: Field = "text", name: str | None = None) -> TextWindow:
    """A window of a corpus Parquet file or directory (e.g. data/splits/train.parquet)."""
    import pyarrow.dataset as ds

    path = Path(path)
    win = TextWindow(name=name or str(path), texts=[], kind="corpus")
    if not path.exists():
        return win
    dataset = ds.dataset(str(path), format="parquet")
    columns = [c for c in ("doc_id", "text", "prompt") if c in dataset.schema.names]
    if which not in columns:
        raise ValueError(f"{path}: no '{which}' column (columns: {', '.join(dataset.schema.names)})")
    table = dataset.to_table(columns=columns)
    if "doc_id" in columns:  # a stable order whatever the part-file layout
        table = table.sort_by("doc_id")
    values = table.column(which).to_pylist()
    win.records_read = len(values)
    for i, v in enumerate(values):
        if isinstance(v, str) and v.strip():
            win.texts.append(v)
        else:
            win.skipped_no_text += 1
    if "doc_id" in columns:  # aligned with the texts kept
        win.ids = [str(d) for d, v in zip(table.column("doc_id").to_pylist(), values)
                   if isinstance(v, str) and v.strip()]
    return win


# --- the serving request log -----------------------------------------------------------------------------------

@dataclass
class RequestLog:
    path: str
    records: list[dict[str, Any]]  # parsed, in file order, inside [since, until)
    rejected: list[Reject] = field(default_factory=list)
    lines_read: int = 0  # non-blank lines
    outside_window: int = 0  # parsed fine, but ts outside [since, until)

    def accounting(self) -> dict[str, int]:
        return {"lines": self.lines_read, "records": len(self.records), "rejected": len(self.rejected),
                "outside_window": self.outside_window}


def parse_ts(value: Any) -> datetime | None:
    """An ISO-8601 timestamp ("2026-12-02T13:00:00.123Z") as an aware UTC datetime; None when unparseable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _rotated_request_logs(path: Path) -> list[Path]:
    """The files serving rotated the log at `path` into (`<stem>.<000001...>.jsonl`, pipelines/serving/
    request_log.py), oldest first: a window over the log's path reads them before the live file."""
    pattern = re.compile(rf"^{re.escape(path.stem)}\.(\d{{6,}}){re.escape(path.suffix)}$")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
             if (m := pattern.match(p.name))] if path.suffix and path.parent.is_dir() else []
    return [p for _, p in sorted(found)]


def read_request_log(path: str | Path | None, since: str | datetime | None = None,
                     until: str | datetime | None = None) -> RequestLog:
    """The request log's records with `since <= ts < until` (either bound None: open). A line that is not a JSON
    object, or lacks a parseable `ts` while a bound is set, is rejected with its line number; a missing file (or
    a folder of `*.jsonl` files, read in name order) gives an empty log, never an error."""
    lo = parse_ts(since) if since is not None else None
    hi = parse_ts(until) if until is not None else None
    if (since is not None and lo is None) or (until is not None and hi is None):
        raise ValueError(f"read_request_log: bad since/until ({since!r}, {until!r}): ISO-8601 expected")
    log = RequestLog(path=str(path), records=[])
    if path is None:
        return log
    root = Path(path)
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else _rotated_request_logs(root) + (
        [root] if root.exists() else [])
    for file in files:
        for line, rec, error in _records(file, jsonl=True):
            log.lines_read += 1
            if error is None and not isinstance(rec, dict):
                error = f"record is a {type(rec).__name__}, not an object"
            if error:
                log.rejected.append(Reject(str(file), line, error))
                continue
            if lo is not None or hi is not None:
                ts = parse_ts(rec.get("ts"))
                if ts is None:
                    log.rejected.append(Reject(str(file), line, "missing or unparseable 'ts'"))
                    continue
                if (lo is not None and ts < lo) or (hi is not None and ts >= hi):
                    log.outside_window += 1
                    continue
            log.records.append(rec)
    return log


def request_log_window(log: RequestLog, name: str | None = None, ok_only: bool = True) -> TextWindow:
    """The logged prompts as a window (requests that failed with a status >= 400 are skipped when `ok_only`; shadow
    copies, `arm` "shadow", repeat a user's prompt and are always skipped)."""
    win = TextWindow(name=name or log.path, texts=[], kind="request_log", rejected=list(log.rejected),
                     records_read=len(log.records) + len(log.rejected))
    for rec in log.records:
        prompt = rec.get("prompt")
        status = rec.get("status")
        if (ok_only and isinstance(status, int) and status >= 400) or rec.get("arm") == "shadow":
            win.skipped_no_text += 1
        elif isinstance(prompt, str) and prompt.strip():
            win.texts.append(prompt)
        else:
            win.skipped_no_text += 1
    return win


def looks_like_request_log(path: str | Path) -> bool:
    """True when the first parseable record of a JSONL file (or folder) has `request_id` and `prompt` keys."""
    root = Path(path)
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    for file in files:
        if not file.exists() or file.suffix != ".jsonl":
            continue
        for _, rec, error in _records(file, jsonl=True):
            if error is None and isinstance(rec, dict):
                return "request_id" in rec and "prompt" in rec
    return False


def load_window(path: str | Path, fmt: str = "auto", which: Field = "text", since: str | None = None,
                until: str | None = None) -> TextWindow:
    """A window of any supported source. `fmt`: auto | corpus | files | request_log. Auto: Parquet -> corpus,
    JSONL whose records carry request_id + prompt -> request_log, other JSON/JSONL -> files."""
    p = Path(path)
    if fmt == "auto":
        if p.suffix == ".parquet" or (p.is_dir() and any(p.rglob("*.parquet"))):
            fmt = "corpus"
        elif looks_like_request_log(p):
            fmt = "request_log"
        else:
            fmt = "files"
    if fmt == "corpus":
        return read_corpus_window(p, which)
    if fmt == "request_log":
        return request_log_window(read_request_log(p, since, until))
    if fmt == "files":
        return read_files_window(p, which)
    raise ValueError(f"unknown window format '{fmt}' (auto, corpus, files, request_log)")
