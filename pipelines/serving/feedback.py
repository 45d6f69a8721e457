"""User feedback on answers: `POST /v1/feedback` (pipelines.serving.routes.feedback) and its append-only log.

A rating is thumbs (+1 / -1, `scale: "thumbs"`) or stars (1..5, `scale: "stars"`). Without `scale`, -1 and +1 are
thumbs and 2..5 are stars; send `scale: "stars"` for a one-star rating. Negative feedback: thumbs -1, or stars <= 2.

The feedback log (`serve.feedback_log`, rotated at `serve.request_log_max_bytes` like the request log, by the same
writer) is one JSON line per accepted feedback, joined to the request log by `request_id`:
ts, feedback_id (sha256 of "<key_id>:<request_id>", key_id "" in open mode: one feedback per key and request, a
repeat is idempotent), request_id, key_id, model_version, alias, arm, rating, scale, negative, correction
(PII-redacted by pipelines.data.pii like the request log, or null), correction_sha256 (of the unredacted text),
tags, pii_found {correction: {...}, tags: {...}}, rollout_id (the rated request's), replica (the process that took
the feedback).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationInfo, field_validator,
                      model_validator)

from pipelines.serving.request_log import JsonlLog, find_line, redact, utc_ts

FIELDS = ("ts", "feedback_id", "request_id", "key_id", "model_version", "alias", "arm", "rating", "scale",
          "negative", "correction", "correction_sha256", "tags", "pii_found", "rollout_id", "replica")
MAX_CORRECTION_CHARS = 8000
MAX_TAGS = 16
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # short labels (e.g. "wrong_fact", "tone"), not free text


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)  # the `x-request-id` header of the rated answer
    scale: Literal["thumbs", "stars"] | None = None  # None: -1/+1 thumbs, 2..5 stars
    rating: StrictInt
    correction: str | None = Field(default=None, max_length=MAX_CORRECTION_CHARS)  # what the answer should have been
    tags: list[Annotated[str, StringConstraints(pattern=TAG_PATTERN)]] = Field(default_factory=list,
                                                                               max_length=MAX_TAGS)

    @field_validator("rating")
    @classmethod
    def _on_its_scale(cls, rating: int, info: ValidationInfo) -> int:
        scale = info.data.get("scale")
        if scale is None and rating not in (-1, 1, 2, 3, 4, 5):
            raise ValueError(f"{rating} is neither a thumbs rating (-1 or 1) nor a stars rating (1 to 5)")
        if scale is not None and rating not in ((-1, 1) if scale == "thumbs" else range(1, 6)):
            raise ValueError(f"{rating} is not a {scale} rating ({'-1 or 1' if scale == 'thumbs' else '1 to 5'})")
        return rating

    @model_validator(mode="after")
    def _settle(self) -> "FeedbackRequest":
        if self.scale is None:
            self.scale = "thumbs" if self.rating in (-1, 1) else "stars"
        self.tags = list(dict.fromkeys(self.tags))
        return self

    @property
    def negative(self) -> bool:
        return self.rating == -1 if self.scale == "thumbs" else self.rating <= 2


def feedback_id(key_id: str | None, request_id: str) -> str:
    return hashlib.sha256(f"{key_id or ''}:{request_id}".encode("utf-8")).hexdigest()


class RecentRequests:
    """The chat requests this process answered (request_id -> what feedback needs), newest `max_entries`."""

    def __init__(self, max_entries: int = 100_000):
        self.max = max_entries
        self.items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str, meta: dict) -> None:
        with self._lock:
            self.items[request_id] = meta
            while len(self.items) > self.max:
                self.items.popitem(last=False)

    def get(self, request_id: str) -> dict | None:
        with self._lock:
            return self.items.get(request_id)


class FeedbackLog:
    """Writes feedback lines once per feedback_id. Replicas of one node share the log: the check for an earlier
    line with the same feedback_id and the append run under an exclusive flock on `<log>.lock`, so two replicas
    taking the same duplicate at once still write one line. Lookups scan the `lookup_files` newest files."""

    def __init__(self, path: str | Path, max_bytes: int, lookup_files: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.log: JsonlLog | None = None  # created (with its folder) on the first accepted feedback
        self.lookup_files = lookup_files
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._seen: OrderedDict[str, dict] = OrderedDict()  # feedback_id -> what the response echoes of the line
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _exclusive(self):
        import fcntl

        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _remember(self, line: dict) -> None:
        self._seen[line["feedback_id"]] = {k: line.get(k) for k in ("feedback_id", "rating", "scale", "negative",
                                                                     "model_version")}
        while len(self._seen) > 100_000:
            self._seen.popitem(last=False)

    def submit(self, fb: FeedbackRequest, *, key_id: str | None, meta: dict, replica: str) -> tuple[dict, bool]:
        """(the line, True) when written; (the earlier line, or its main fields, False) for a duplicate."""
        fid = feedback_id(key_id, fb.request_id)
        red_correction, pii_correction = redact(fb.correction)
        red_tags = [redact(t) for t in fb.tags]
        pii_tags: dict[str, int] = {}
        for _, found in red_tags:
            for k, n in found.items():
                pii_tags[k] = pii_tags.get(k, 0) + n
        line = {"ts": utc_ts(), "feedback_id": fid, "request_id": fb.request_id, "key_id": key_id,
                "model_version": meta.get("model_version"), "alias": meta.get("alias"), "arm": meta.get("arm"),
                "rating": fb.rating, "scale": fb.scale, "negative": fb.negative, "correction": red_correction,
                "correction_sha256": hashlib.sha256(fb.correction.encode("utf-8")).hexdigest()
                if fb.correction else None,
                "tags": [t for t, _ in red_tags], "pii_found": {"correction": pii_correction, "tags": pii_tags},
                "rollout_id": meta.get("rollout_id"), "replica": replica}
        with self._exclusive():
            if fid in self._seen:
                return self._seen[fid], False
            earlier = find_line(self.path, "feedback_id", fid, self.lookup_files)
            if earlier is not None:
                self._remember(earlier)
                return earlier, False
            if self.log is None:
                self.log = JsonlLog(self.path, self.max_bytes)
            self.log.append(line)
            self._remember(line)
        return line, True
