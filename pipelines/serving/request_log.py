"""The request log: one JSON line per request (errors included), PII-redacted, appended with one write per line.

Schema (monitoring reads exactly these fields): ts, request_id, key_id, model, model_version, alias, mode, status,
prompt (last user message, redacted by pipelines.data.pii), prompt_sha256 (of the unredacted prompt), response
(redacted; null on errors), prompt_tokens, completion_tokens, latency_ms, ttft_ms, cpu_s (the request's share of
the process CPU-seconds while it generated, pipelines.serving.metrics; null when no generation ran), cost_usd (cpu_s
at the `cost` price table), pii_found {prompt, response},
guard (null until the guard fills it), contexts ([{doc_id, chunk_id, text}] in RAG mode, else null),
arm ("champion" | "challenger" | "shadow": who answered), rollout_id (the rollout that routed the request, null when
none did: no rollout running, or an explicit `<model>:<alias>`), replica ("hostname:pid" of the server process),
shadow_of (shadow lines only: the user-facing request_id whose copy the challenger answered; a shadow line has its
own request_id, is never returned to a user and cannot be rated).
Rotation: a line that would take the file above `max_bytes` first renames it to `<stem>.<n>.jsonl` (n = 000001,
000002, ... zero-padded, so name order is time order and every rotated file still ends in `.jsonl`) and starts a new
one. Readers (pipelines.monitoring.windows.read_request_log) given the log's path read its rotated files first, then
the live one (`log_files`); given the folder, every `*.jsonl` in name order, which is the same order.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FIELDS = ("ts", "request_id", "key_id", "model", "model_version", "alias", "mode", "status", "prompt",
          "prompt_sha256", "response", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "cpu_s",
          "cost_usd", "pii_found", "guard", "contexts", "arm", "rollout_id", "replica", "shadow_of")


def utc_ts() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def redact(text: str | None) -> tuple[str | None, dict[str, int]]:
    from pipelines.data import pii

    if not text:
        return text, {}
    out, entities = pii.redact(text)
    return out, dict(Counter(entities))


def rotated_name(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}.{n:06d}{path.suffix}")


def _rotated(path: Path) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(path.stem)}\.(\d{{6,}}){re.escape(path.suffix)}$")
    if not path.parent.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
                  if (m := pattern.match(p.name)))


def rotated_files(path: str | Path) -> list[Path]:
    """The rotated files of the log at `path`, oldest first."""
    return [p for _, p in _rotated(Path(path))]


def log_files(path: str | Path) -> list[Path]:
    """Every file of the log at `path` in time order: the rotated ones, then the live one (when it exists)."""
    path = Path(path)
    return rotated_files(path) + ([path] if path.exists() else [])


class JsonlLog:
    """An append-only JSONL file rotated at `max_bytes` (the request log's and the feedback log's writer)."""

    def __init__(self, path: str | Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self.rotations = 0

    def _rotate(self) -> None:
        """Move the live file to the next free `<stem>.<n>.jsonl`. Several processes may share one log (Ray Serve
        replicas on a node): the target is created with link() (never overwrites another's rotation), and a live
        file another process has just rotated away is simply started anew."""
        while True:
            done = _rotated(self.path)
            target = rotated_name(self.path, done[-1][0] + 1 if done else 1)
            try:
                os.link(self.path, target)
            except FileExistsError:
                continue
            except FileNotFoundError:
                return
            os.unlink(self.path)
            return

    def append(self, line: dict) -> dict:
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self.max_bytes and (size := self.path.stat().st_size if self.path.exists() else 0) and \
                    size + len(data) > self.max_bytes:
                self._rotate()
                self.rotations += 1
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)  # one write per line on an O_APPEND fd: lines never interleave
            finally:
                os.close(fd)
            self.written += 1
        return line


class RequestLog(JsonlLog):
    def record(self, *, request_id: str, key_id: str | None, model: str | None, model_version: str | None,
               alias: str | None, mode: str, status: int, prompt: str | None, response: str | None,
               prompt_tokens: int | None, completion_tokens: int | None, latency_ms: float,
               ttft_ms: float | None, contexts: list[dict[str, Any]] | None = None,
               guard: dict | None = None, cpu_s: float | None = None, cost_usd: float | None = None,
               arm: str | None = None, rollout_id: str | None = None, replica: str | None = None,
               shadow_of: str | None = None, fallback: bool = False) -> dict:
        red_prompt, pii_prompt = redact(prompt)
        red_response, pii_response = redact(response) if status < 400 else (None, {})
        line = {
            "ts": utc_ts(), "request_id": request_id, "key_id": key_id, "model": model,
            "model_version": model_version, "alias": alias, "mode": mode, "status": status,
            "prompt": red_prompt,
            "prompt_sha256": hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest() if prompt else None,
            "response": red_response, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "latency_ms": round(latency_ms, 1), "ttft_ms": round(ttft_ms, 1) if ttft_ms is not None else None,
            "cpu_s": round(cpu_s, 4) if cpu_s is not None else None,
            "cost_usd": round(cost_usd, 10) if cost_usd is not None else None,
            "pii_found": {"prompt": pii_prompt, "response": pii_response}, "guard": guard,
            "contexts": [{"doc_id": c["doc_id"], "chunk_id": c["chunk_id"], "text": redact(c["text"])[0]}
                         for c in contexts] if contexts is not None else None,
            "arm": arm, "rollout_id": rollout_id, "replica": replica, "shadow_of": shadow_of,
        }
        if fallback:  # a failed challenger attempt retried on the champion (only these lines carry the key)
            line["fallback"] = True
        return self.append(line)


def find_line(path: str | Path, field: str, value: str, max_files: int) -> dict | None:
    """The last line of the log at `path` (its `max_files` newest files: the live one, then the rotated ones, newest
    first) whose `field` is the string `value`; None when there is none. Each file is searched as bytes through an
    mmap for the serialised `"field": "value"` (how JsonlLog writes it), so a miss costs one memory scan, no parse."""
    needle = f"{json.dumps(field)}: {json.dumps(value, ensure_ascii=False)}".encode("utf-8")
    for file in reversed(log_files(path)[-max_files:] if max_files > 0 else []):
        try:
            with open(file, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    continue
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    at = mm.rfind(needle)
                    while at >= 0:
                        start = mm.rfind(b"\n", 0, at) + 1
                        end = mm.find(b"\n", at)
                        try:
                            line = json.loads(mm[start:end if end >= 0 else len(mm)])
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            line = None
                        if isinstance(line, dict) and line.get(field) == value:
                            return line
                        at = mm.rfind(needle, 0, start)
        except (FileNotFoundError, ValueError):  # rotated away meanwhile / emptied: look at the next file
            continue
    return None


def usage_summary(path: str | Path, price_per_cpu_hour: float) -> dict | None:
    """Requests, tokens, CPU-seconds and cost of the whole log at `path` (rotated files included); None when there
    is no log. Cost per 1k tokens counts only the requests that logged their CPU-seconds (lines written before
    `cpu_s` was logged have none); a line without `cost_usd` is priced at `price_per_cpu_hour`."""
    files = log_files(path)
    if not files:
        return None
    requests = metered = tokens = metered_tokens = 0
    cpu = cost = 0.0
    for file in files:
        for raw in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if not isinstance(line, dict):
                continue
            requests += 1
            n = (line.get("prompt_tokens") or 0) + (line.get("completion_tokens") or 0)
            tokens += n
            if line.get("cpu_s") is not None:
                metered += 1
                metered_tokens += n
                cpu += float(line["cpu_s"])
                cost += float(line["cost_usd"]) if line.get("cost_usd") is not None else \
                    float(line["cpu_s"]) * price_per_cpu_hour / 3600.0
    return {"path": str(path), "files": len(files), "requests": requests, "metered_requests": metered,
            "tokens": tokens, "metered_tokens": metered_tokens, "cpu_seconds": round(cpu, 4),
            "cost_usd": round(cost, 10),
            "cost_per_1k_tokens_usd": round(cost / metered_tokens * 1000, 10) if metered_tokens else None}
