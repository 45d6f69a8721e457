"""When a drift event may start a retrain: a cooldown and a daily cap stop a drift storm (every monitor window
drifting while the fix is still training) from retraining in a loop.

The history is a small JSON file (atomic writes) of the retrains that were allowed, keyed by run id, so a retried
task of the same run is allowed again instead of blocking itself. Time comes from the run (its `run_after`), not
from the clock, so a rerun of an old run decides as it did then.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypedDict

from pipelines.config import StageConfig, project_root
from pipelines.io import read_json, write_json


class RetrainConfig(StageConfig):
    """The `retrain` section of params.yaml."""

    cooldown_minutes: float  # no second triggered retrain within this many minutes of the last one
    max_per_day: int  # triggered retrains in any 24 h window
    history: str  # JSON record of allowed retrains
    promotion_approval: bool  # true: a person approves (Airflow HITL) between gate and promote


class RetrainDecision(TypedDict):
    allowed: bool
    reason: str
    run_id: str
    at: str
    last_retrain_at: str | None
    retrains_last_24h: int


def _path(cfg: RetrainConfig) -> Path:
    p = Path(cfg.history)
    return p if p.is_absolute() else project_root() / p


def _load(cfg: RetrainConfig) -> list[dict[str, Any]]:
    path = _path(cfg)
    return read_json(path) if path.exists() else []


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def decide(cfg: RetrainConfig, *, run_id: str, at: datetime, trigger: dict[str, Any] | None = None,
           record: bool = True) -> RetrainDecision:
    """Allow or refuse the retrain of run `run_id` happening at `at`; an allowed one is recorded."""
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    history = _load(cfg)
    mine = [h for h in history if h["run_id"] == run_id]
    earlier = sorted((h for h in history if h["run_id"] != run_id and _parse(h["at"]) <= at),
                     key=lambda h: h["at"])
    last = _parse(earlier[-1]["at"]) if earlier else None
    in_day = sum(1 for h in earlier if at - _parse(h["at"]) < timedelta(days=1))
    base = {"run_id": run_id, "at": at.isoformat(), "last_retrain_at": last.isoformat() if last else None,
            "retrains_last_24h": in_day}
    if mine:
        return RetrainDecision(allowed=True, reason="this run was allowed before (task retry)", **base)
    if last is not None and at - last < timedelta(minutes=cfg.cooldown_minutes):
        wait = timedelta(minutes=cfg.cooldown_minutes) - (at - last)
        return RetrainDecision(allowed=False, reason=f"cooldown: last retrain {int((at - last).total_seconds())} s "
                               f"ago, next allowed in {int(wait.total_seconds())} s", **base)
    if in_day >= cfg.max_per_day:
        return RetrainDecision(allowed=False, reason=f"daily cap: {in_day} retrains in the last 24 h "
                               f"(max_per_day {cfg.max_per_day})", **base)
    if record:
        history.append({"run_id": run_id, "at": at.isoformat(), "trigger": trigger or {}})
        write_json(_path(cfg), history)
    return RetrainDecision(allowed=True, reason="no retrain inside the cooldown and under the daily cap", **base)
