"""The promotion gate's rules: may a candidate replace the champion?

Two kinds of checks, each written down with observed value, threshold and outcome:
- absolute floors (`Floors`): perplexity ceiling, ROUGE-L floor, attack-success-rate ceiling;
- versus the champion (`VersusChampion`), when the registry's alias names a version: relative perplexity
  increase, ROUGE-L drop and ASR increase against the metrics recorded with the champion.
With no champion the floors alone decide. Evaluate and audit must describe the same candidate (same adapter
hash), otherwise the decision is a reject. A threshold set to null switches its check off.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NotRequired, TypedDict

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.models.registry import Champion, ChampionInfo, flat_metrics


class Floors(StageConfig):
    max_perplexity: float | None
    min_rouge_l: float | None
    max_attack_success_rate: float | None


class VersusChampion(StageConfig):
    max_perplexity_increase_pct: float | None
    max_rouge_l_drop: float | None
    max_attack_success_rate_increase: float | None


class Check(TypedDict):
    check: Literal["same_candidate", "floor", "versus_champion"]
    metric: str | None
    observed: Any
    op: str | None
    threshold: Any
    passed: bool
    champion_value: NotRequired[float]
    champion_version: NotRequired[int]
    note: NotRequired[str]


class Verdict(TypedDict):
    decision: Literal["promote", "reject"]
    reasons: list[Check]
    failed: list[str]
    champion: int | None  # the champion's version
    champion_info: ChampionInfo | None
    candidate_sha256: str | None
    candidate_dir: str | None
    observed: dict[str, float]
    champion_metrics: dict[str, float] | None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check(name: str, metric: str, observed: Any, op: str, threshold: float, **extra) -> Check:
    if not _finite(observed):
        passed = False
    elif op == "<=":
        passed = observed <= threshold
    else:
        passed = observed >= threshold
    return {"check": name, "metric": metric, "observed": observed, "op": op, "threshold": threshold,  # type: ignore[typeddict-item]
            "passed": bool(passed), **extra}


def decide(floors: Floors, versus: VersusChampion, evaluate: dict, audit: dict, champion: Champion) -> Verdict:
    """The verdict on the candidate that the evaluate and audit metrics describe; StageFailed when nothing is
    configured to decide on (no floor and no champion)."""
    observed = flat_metrics(evaluate, audit)
    checks: list[Check] = []
    ev_hash, au_hash = evaluate.get("candidate_sha256"), audit.get("candidate_sha256")
    if ev_hash and au_hash:
        checks.append({"check": "same_candidate", "metric": "candidate_sha256", "observed": au_hash, "op": "==",
                       "threshold": ev_hash, "passed": ev_hash == au_hash})
    f = floors
    if f.max_perplexity is not None:
        checks.append(_check("floor", "perplexity", observed.get("perplexity"), "<=", f.max_perplexity))
    if f.min_rouge_l is not None:
        checks.append(_check("floor", "rouge_l", observed.get("rouge_l"), ">=", f.min_rouge_l))
    if f.max_attack_success_rate is not None:
        checks.append(_check("floor", "attack_success_rate", observed.get("attack_success_rate"), "<=",
                             f.max_attack_success_rate))
    info, champion_metrics = champion
    if info is not None:
        v = versus
        ref = champion_metrics
        version = info["version"]
        if v.max_perplexity_increase_pct is not None and _finite(ref.get("perplexity")):
            limit = ref["perplexity"] * (1 + v.max_perplexity_increase_pct / 100)
            checks.append(_check("versus_champion", "perplexity", observed.get("perplexity"), "<=", round(limit, 4),
                                 champion_value=ref["perplexity"], champion_version=version))
        if v.max_rouge_l_drop is not None and _finite(ref.get("rouge_l")):
            checks.append(_check("versus_champion", "rouge_l", observed.get("rouge_l"), ">=",
                                 round(ref["rouge_l"] - v.max_rouge_l_drop, 5),
                                 champion_value=ref["rouge_l"], champion_version=version))
        if v.max_attack_success_rate_increase is not None and _finite(ref.get("attack_success_rate")):
            checks.append(_check("versus_champion", "attack_success_rate", observed.get("attack_success_rate"), "<=",
                                 round(ref["attack_success_rate"] + v.max_attack_success_rate_increase, 5),
                                 champion_value=ref["attack_success_rate"], champion_version=version))
        if not any(c["check"] == "versus_champion" for c in checks):
            checks.append({"check": "versus_champion", "metric": None, "observed": None, "op": None, "threshold": None,
                           "passed": True, "note": f"champion v{version} has no recorded metrics; floors decide"})
    if not any(c["check"] == "floor" for c in checks) and info is None:
        raise StageFailed("gate: no floors configured and no champion to compare with: nothing to decide on")
    decision: Literal["promote", "reject"] = "promote" if all(c["passed"] for c in checks) else "reject"
    return {
        "decision": decision,
        "reasons": checks,
        "failed": [f"{c['check']}:{c['metric']} observed {c['observed']} {c['op']} {c['threshold']} failed"
                   for c in checks if not c["passed"]],
        "champion": info["version"] if info else None,
        "champion_info": info,
        "candidate_sha256": ev_hash or au_hash,
        "candidate_dir": evaluate.get("candidate_dir") or audit.get("candidate_dir"),
        "observed": observed,
        "champion_metrics": champion_metrics or None,
    }
