"""Rollout state: the one small JSON document every serving replica reads to know who gets the challenger.

A rollout hands a new registry version (alias `challenger`) to live traffic in steps (canary) or as a copy of the
traffic (shadow); only a finished rollout moves `champion`. The state lives in one file (or one S3 object) that
every replica polls (`RolloutStore.load`, cheap enough per request) and that the analysis (pipelines/rollout/
analysis.py), the `llmops rollout` CLI and the `llmops_rollout` DAG rewrite atomically (`RolloutStore.save`). A
server restart reads the same file, so it resumes the same step with the same assignments (`assign_challenger` is a
pure function of the rollout id, the sticky key and the share).

Transitions (`advanced`, `held`, `rolled_back`, `completed`, `aborted`) return a new state with a history entry;
moving the registry aliases is pipelines/rollout/lifecycle.py's job.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

Strategy = Literal["direct", "canary", "shadow"]
Status = Literal["running", "completed", "rolled_back", "aborted"]
STRATEGIES: tuple[str, ...] = ("direct", "canary", "shadow")
STATUSES: tuple[str, ...] = ("running", "completed", "rolled_back", "aborted")
ARMS: tuple[str, ...] = ("champion", "challenger", "shadow")


class RolloutStateError(ValueError):
    """The state file exists but is not a rollout state (hand-edited, or another program's file)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime | None = None) -> str:
    return (ts or utc_now()).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(value: str) -> datetime:
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Step:
    share: float           # the challenger's share of users (canary); 0.0 for a shadow step
    min_duration_s: float  # the step lasts at least this long
    min_requests: int      # ... and until the challenger (or shadow) arm has served this many requests
    min_rated: int         # ... and this many of its requests carry feedback (0: none needed)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.share) <= 1.0:
            raise RolloutStateError(f"step share must be in [0, 1], got {self.share}")
        if self.min_duration_s < 0 or self.min_requests < 0 or self.min_rated < 0:
            raise RolloutStateError("step minima must be >= 0")


@dataclass(frozen=True)
class RolloutState:
    rollout_id: str
    strategy: Strategy
    status: Status
    champion_version: str | None   # the version serving everyone else (None: no champion yet)
    challenger_version: str
    steps: list[Step]
    step_index: int
    step_started_at: str           # ISO-8601 UTC
    created_at: str
    chosen_by: str                 # who chose the strategy: "params" | "cli" | "hitl:<user>" | ...
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RolloutStateError(f"unknown strategy {self.strategy!r} (one of {', '.join(STRATEGIES)})")
        if self.status not in STATUSES:
            raise RolloutStateError(f"unknown status {self.status!r} (one of {', '.join(STATUSES)})")
        if not self.steps:
            raise RolloutStateError("a rollout has at least one step")
        if not 0 <= self.step_index < len(self.steps):
            raise RolloutStateError(f"step_index {self.step_index} outside 0..{len(self.steps) - 1}")

    # --- what serving reads -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.status == "running"

    def challenger_share(self) -> float:
        """The share of sticky keys served by the challenger now: the step's share while a canary runs, else 0."""
        if self.strategy == "canary" and self.running:
            return float(self.steps[self.step_index].share)
        return 0.0

    def shadowing(self) -> bool:
        """True while a shadow rollout runs: the challenger answers a copy of every request, never returned."""
        return self.strategy == "shadow" and self.running

    @property
    def step(self) -> Step:
        return self.steps[self.step_index]

    @property
    def last_step(self) -> bool:
        return self.step_index == len(self.steps) - 1

    def step_age_s(self, now: datetime | None = None) -> float:
        return ((now or utc_now()) - parse_iso(self.step_started_at)).total_seconds()

    # --- transitions (pure: a new state; the caller saves it) --------------------------------------------------
    def _moved(self, event: str, by: str, reason: str, now: datetime | None = None, **changes: Any) -> RolloutState:
        ts = iso(now)
        entry = {"ts": ts, "event": event, "by": by, "reason": reason, "from_step": self.step_index,
                 "share": self.challenger_share() if self.running else 0.0}
        entry.update({k: v for k, v in changes.pop("extra", {}).items()})
        new = dataclasses.replace(self, history=[*self.history, entry], **changes)
        entry["to_step"] = new.step_index
        return new

    def _require_running(self, what: str) -> None:
        if not self.running:
            raise RolloutStateError(f"cannot {what} rollout {self.rollout_id}: it is {self.status}")

    def advanced(self, by: str, reason: str = "", now: datetime | None = None, **extra: Any) -> RolloutState:
        """The next step (canary); the last step cannot advance: it completes."""
        self._require_running("advance")
        if self.last_step:
            raise RolloutStateError(f"rollout {self.rollout_id} is on its last step: complete it instead")
        return self._moved("advance", by, reason, now, step_index=self.step_index + 1,
                           step_started_at=iso(now), extra=extra)

    def held(self, by: str, reason: str, now: datetime | None = None, **extra: Any) -> RolloutState:
        """Same step, one more history entry (the analysis looked and could not decide)."""
        self._require_running("hold")
        return self._moved("hold", by, reason, now, extra=extra)

    def rolled_back(self, by: str, reason: str, now: datetime | None = None, **extra: Any) -> RolloutState:
        self._require_running("roll back")
        return self._moved("rollback", by, reason, now, status="rolled_back", extra=extra)

    def aborted(self, by: str, reason: str, now: datetime | None = None, **extra: Any) -> RolloutState:
        self._require_running("abort")
        return self._moved("abort", by, reason, now, status="aborted", extra=extra)

    def completed(self, by: str, reason: str = "", now: datetime | None = None, **extra: Any) -> RolloutState:
        self._require_running("complete")
        return self._moved("complete", by, reason, now, status="completed", extra=extra)

    # --- (de)serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> RolloutState:
        if not isinstance(data, dict):
            raise RolloutStateError("rollout state must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(data) if n != "history")
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise RolloutStateError(f"rollout state: missing {missing}, unknown {unknown}")
        try:
            steps = [Step(share=float(s["share"]), min_duration_s=float(s["min_duration_s"]),
                          min_requests=int(s["min_requests"]), min_rated=int(s["min_rated"]))
                     for s in data["steps"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutStateError(f"rollout state: bad steps ({exc})") from None
        return cls(**{**data, "steps": steps, "step_index": int(data["step_index"]),
                      "champion_version": None if data["champion_version"] is None else str(data["champion_version"]),
                      "challenger_version": str(data["challenger_version"]),
                      "history": list(data.get("history") or [])})


def new_rollout(strategy: Strategy, champion_version: str | int | None, challenger_version: str | int,
                steps: list[Step], chosen_by: str, now: datetime | None = None,
                rollout_id: str | None = None) -> RolloutState:
    """A running rollout on its first step. `shadow` runs as one step of share 0 (the caller passes it)."""
    ts = iso(now)
    rid = rollout_id or f"ro-{(now or utc_now()).strftime('%Y%m%dT%H%M%S')}-v{challenger_version}-{uuid.uuid4().hex[:6]}"
    return RolloutState(
        rollout_id=rid, strategy=strategy, status="running",
        champion_version=None if champion_version is None else str(champion_version),
        challenger_version=str(challenger_version), steps=list(steps), step_index=0, step_started_at=ts,
        created_at=ts, chosen_by=chosen_by,
        history=[{"ts": ts, "event": "start", "by": chosen_by, "reason": f"{strategy} rollout of version "
                  f"{challenger_version} (champion {champion_version})", "from_step": None, "to_step": 0,
                  "share": steps[0].share if strategy == "canary" else 0.0}])


def assign_challenger(sticky_key: str, rollout_id: str, share: float) -> bool:
    """True when `sticky_key` (an API key id or the request's `user`) is served by the challenger at `share`.

    The first 8 bytes of sha256(rollout_id + ":" + sticky_key) read as a fraction of 2**64: uniform, so the expected
    challenger share is exactly `share`; deterministic across replicas and restarts; monotone in `share`, so a key
    on the challenger at 5% stays on it at 25%; and a new rollout id reshuffles who goes first.
    """
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.sha256(f"{rollout_id}:{sticky_key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < share


class RolloutStore:
    """Load and save the rollout state at a local path or an `s3://bucket/key` URI.

    `load()` is safe to call on every request: a local file is re-read only when its (inode, mtime, size) changed
    (`save` replaces the file by rename, so a new state always has a new inode); an S3 object is re-checked with a
    HEAD (its ETag) at most every `poll_s` seconds and downloaded only when the ETag changed. No file (or no
    object): None, meaning no rollout, and serving behaves as before. A file that is not a rollout state raises
    RolloutStateError: the caller decides (serving keeps the champion and logs it).
    """

    def __init__(self, path_or_uri: str | Path, poll_s: float = 2.0):
        self.uri = str(path_or_uri)
        self.is_s3 = self.uri.startswith(("s3://", "s3a://"))
        self.path = None if self.is_s3 else Path(self.uri)
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._sig: Any = None
        self._state: RolloutState | None = None
        self._checked = 0.0
        self._client = None

    def __repr__(self) -> str:
        return f"RolloutStore({self.uri!r})"

    # --- S3 --------------------------------------------------------------------------------------------------------
    def _s3(self):
        if self._client is None:
            import boto3

            from pipelines.storage.s3 import endpoint_url

            self._client = boto3.client("s3", endpoint_url=endpoint_url())
        return self._client

    def _s3_loc(self) -> tuple[str, str]:
        from pipelines.storage.s3 import split_uri

        bucket, key = split_uri(self.uri)
        if not key or key.endswith("/"):
            raise RolloutStateError(f"rollout state URI names no object: {self.uri}")
        return bucket, key

    def _load_s3(self) -> RolloutState | None:
        from botocore.exceptions import ClientError

        now = time.monotonic()
        if self._sig is not None and now - self._checked < self.poll_s:
            return self._state
        bucket, key = self._s3_loc()
        try:
            etag = self._s3().head_object(Bucket=bucket, Key=key)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                self._sig, self._state, self._checked = ("absent",), None, now
                return None
            raise
        if etag != self._sig:
            try:
                obj = self._s3().get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    self._sig, self._state, self._checked = ("absent",), None, now
                    return None
                raise
            self._state = self._parse(obj["Body"].read())
            self._sig = obj.get("ETag", etag)
        self._checked = now
        return self._state

    # --- local -----------------------------------------------------------------------------------------------------
    def _load_local(self) -> RolloutState | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._sig, self._state = ("absent",), None
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig != self._sig:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:  # replaced between stat and open: the next call reads the new one
                return self._state
            self._state = self._parse(raw)
            self._sig = sig
        return self._state

    @staticmethod
    def _parse(raw: bytes) -> RolloutState:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RolloutStateError(f"rollout state is not JSON: {exc}") from None
        return RolloutState.from_dict(data)

    # --- API -------------------------------------------------------------------------------------------------------
    def load(self) -> RolloutState | None:
        with self._lock:
            return self._load_s3() if self.is_s3 else self._load_local()

    def save(self, state: RolloutState) -> None:
        """Write the whole state atomically: a reader sees the old or the new document, never a torn one (local: a
        temp file in the same folder, fsync, rename; S3: one PUT, which S3 applies whole)."""
        body = json.dumps(state.to_dict(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        with self._lock:
            if self.is_s3:
                bucket, key = self._s3_loc()
                self._s3().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
                self._sig = None  # the next load() re-reads
                return
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._sig = None


def store_for(path_or_uri: str | Path, poll_s: float = 2.0) -> RolloutStore:
    """A RolloutStore for a params path: relative local paths are taken from the repository root."""
    uri = str(path_or_uri)
    if uri.startswith(("s3://", "s3a://")):
        return RolloutStore(uri, poll_s=poll_s)
    from pipelines.config import project_root

    p = Path(uri)
    return RolloutStore(p if p.is_absolute() else project_root() / p, poll_s=poll_s)
