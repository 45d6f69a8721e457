"""The deploy strategy as a person's decision (`rollout.choose_strategy`): what the approver sees, and the record
of what they chose.

With `rollout.choose_strategy`, the lifecycle's promotion approval becomes a choice among direct, canary and shadow
(an Airflow HITL task, dags/llmops_lifecycle.py). The approver sees the gate's evidence (its decision and checks)
and a cost estimate of each strategy (`cost_estimate`, from the live request log and evaluate's cost per 1k
tokens). The answer is written here (`record_choice`: `<rollout.decisions_dir>/choice.json`, and appended to
`choices.jsonl`), keyed by the candidate's adapter hash; promote reads it back (`choice_for`) and starts the
rollout with that strategy and `chosen_by` (recorded in the rollout state). No Airflow import.
"""
from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipelines.config import load_params, project_root
from pipelines.io import read_json, write_json
from pipelines.rollout.config import RolloutConfig
from pipelines.rollout.state import iso, utc_now

STRATEGIES = ("direct", "canary", "shadow")
REJECT = "Reject"
CHOICE_FILE = "choice.json"
HISTORY_FILE = "choices.jsonl"
LOOKBACK_H = 24.0  # live traffic looked at for the estimate


def _dir(cfg: RolloutConfig, root: Path | None = None) -> Path:
    path = Path(cfg.decisions_dir)
    return path if path.is_absolute() else (root or project_root()) / path


def record_choice(cfg: RolloutConfig, strategy: str, *, by: str, candidate_sha256: str,
                  evidence: dict[str, Any] | None = None, root: Path | None = None) -> Path:
    """Write the approver's strategy for this candidate (latest in choice.json, every choice in choices.jsonl)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown deploy strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    folder = _dir(cfg, root)
    record = {"strategy": strategy, "by": by, "at": iso(), "candidate_sha256": candidate_sha256,
              "evidence": evidence or {}}
    path = write_json(folder / CHOICE_FILE, record)
    with open(folder / HISTORY_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    return path


def choice_for(cfg: RolloutConfig, candidate_sha256: str | None, root: Path | None = None) -> dict[str, Any] | None:
    """The recorded choice for this candidate, or None (no choice asked, or it was for another candidate)."""
    path = _dir(cfg, root) / CHOICE_FILE
    if not candidate_sha256 or not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or record.get("candidate_sha256") != candidate_sha256:
        return None
    return {**record, "record": str(path)}


def _candidate_costs(params: dict[str, Any], root: Path) -> dict[str, float | None]:
    """evaluate's cost per 1k tokens of the candidate and of its reference (the champion, or base)."""
    rel = (params.get("evaluate") or {}).get("metrics")
    try:
        metrics = read_json(root / rel) if rel and (root / rel).exists() else {}
    except (OSError, ValueError):
        metrics = {}

    def cost(arm: str) -> float | None:
        value = ((metrics.get(arm) or {}).get("latency") or {}).get("cost_per_1k_tokens")
        return float(value) if isinstance(value, (int, float)) else None

    return {"candidate": cost("candidate"), "reference": cost("base")}


def _traffic(cfg: RolloutConfig, hours: float) -> dict[str, Any]:
    from pipelines.rollout.logs import read_records

    now = utc_now()
    records, _ = read_records(cfg.analysis.request_log, now - timedelta(hours=hours), now)
    served = [r for r in records if r.get("arm") != "shadow"]
    tokens = sum((r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in served)
    metered = [r for r in served if isinstance(r.get("cost_usd"), (int, float))]
    metered_tokens = sum((r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in metered)
    cost = sum(r["cost_usd"] for r in metered)
    return {"hours": hours, "requests": len(served), "requests_per_h": len(served) / hours,
            "tokens_per_h": tokens / hours,
            "live_cost_per_1k_tokens": cost / metered_tokens * 1000 if metered_tokens else None}


def cost_estimate(cfg: RolloutConfig, params: dict[str, Any] | None = None, root: Path | None = None,
                  hours: float = LOOKBACK_H) -> dict[str, Any]:
    """Extra serving cost and the shortest duration of each strategy, from the last `hours` of live traffic and
    evaluate's cost per 1k tokens (candidate vs its reference). Durations are lower bounds: a step also waits for
    its minimum requests and ratings, and a hold lasts until the evidence decides."""
    root = root or project_root()
    params = params if params is not None else load_params(root / "params.yaml")
    costs = _candidate_costs(params, root)
    traffic = _traffic(cfg, hours)
    per_1k = costs["candidate"] if costs["candidate"] is not None else traffic["live_cost_per_1k_tokens"]
    ref_1k = costs["reference"] if costs["reference"] is not None else traffic["live_cost_per_1k_tokens"]
    delta_1k = (per_1k - ref_1k) if per_1k is not None and ref_1k is not None else None
    rph, tph = traffic["requests_per_h"], traffic["tokens_per_h"]

    def step_hours(share: float, min_duration_s: float, min_requests: int) -> float:
        by_requests = min_requests / (share * rph) if share > 0 and rph > 0 else (0.0 if min_requests == 0
                                                                                  else math.inf)
        return max(min_duration_s / 3600, by_requests)

    out: dict[str, Any] = {"traffic": traffic, "cost_per_1k_tokens": {"candidate": per_1k, "reference": ref_1k},
                           "strategies": {}}
    out["strategies"]["direct"] = {
        "duration_h": 0.0, "extra_usd": 0.0,
        "extra_usd_per_h_after": delta_1k * tph / 1000 if delta_1k is not None else None,
        "note": "every user on the candidate at once; no live evidence before it is champion"}
    canary_h, canary_usd = 0.0, 0.0
    for s in cfg.steps:
        h = step_hours(s.share, s.min_duration_s, s.min_requests)
        canary_h += h
        if delta_1k is not None:
            canary_usd += s.share * h * tph * delta_1k / 1000
    out["strategies"]["canary"] = {
        "duration_h": canary_h, "extra_usd": canary_usd if delta_1k is not None else None,
        "note": f"{len(cfg.steps)} steps ({', '.join(f'{s.share:.0%}' for s in cfg.steps)}); both versions resident "
                "on every replica while it runs"}
    sh = cfg.shadow
    shadow_h = step_hours(1.0, sh.min_duration_s, sh.min_requests)
    out["strategies"]["shadow"] = {
        "duration_h": shadow_h, "extra_usd": shadow_h * tph * per_1k / 1000 if per_1k is not None else None,
        "note": "every request answered twice (the copy off the request path, never returned): serving compute "
                "doubles while it runs; the champion moves when the shadow evidence passes"}
    return out


def _usd(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g} USD"


def _hours(x: float) -> str:
    if math.isinf(x):
        return "no traffic: never (as traffic is now)"
    return f"{x * 60:.0f} min" if x < 2 else f"{x:.1f} h"


def choice_body(gate: dict[str, str], estimate: dict[str, Any], default: str) -> str:
    """The approver's Markdown: the gate's evidence, then the cost and duration of each strategy."""
    t = estimate["traffic"]
    c = estimate["cost_per_1k_tokens"]
    lines = [gate.get("body", ""), "", "### Deploy strategy: cost estimate",
             f"Live traffic (last {t['hours']:.0f} h): {t['requests']} requests, {t['requests_per_h']:.1f}/h, "
             f"{t['tokens_per_h']:.0f} tokens/h. Cost per 1k tokens (evaluate): candidate {_usd(c['candidate'])}, "
             f"reference {_usd(c['reference'])}.", "",
             "| strategy | shortest duration | extra cost during it | note |", "|---|---|---|---|"]
    for name in STRATEGIES:
        s = estimate["strategies"][name]
        extra = _usd(s["extra_usd"]) if name != "direct" else (
            f"then {_usd(s['extra_usd_per_h_after'])}/h" if s["extra_usd_per_h_after"] is not None else "0")
        lines.append(f"| **{name}**{' (params default)' if name == default else ''} | {_hours(s['duration_h'])} | "
                     f"{extra} | {s['note']} |")
    lines += ["", "Choose **direct**, **canary** or **shadow** to promote with that strategy, or **Reject**."]
    return "\n".join(lines)
