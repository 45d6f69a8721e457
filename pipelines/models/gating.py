"""The promotion gate's rules: may a candidate replace the champion?

Two kinds of checks, each written down with observed value, threshold and outcome:
- absolute floors (`Floors`): perplexity ceiling, ROUGE-L floor, attack-success-rate ceiling;
- versus the champion (`VersusChampion`), when the registry's alias names a version: relative perplexity
  increase, ROUGE-L drop and ASR increase against the metrics recorded with the champion.
With no champion the floors alone decide. Evaluate and audit must describe the same candidate (same adapter
hash), otherwise the decision is a reject. A threshold set to null switches its check off.
- on evaluate's paired bootstrap intervals (`VersusReference`, `reference_checks`): the candidate and its
  reference (the champion, or the base without one) answered the same examples in the same run; a metric fails
  only when the candidate is worse by more than its tolerance X with the interval's confidence (the whole
  interval beyond -X), never on a point estimate; a task with fewer than `min_examples` examples cannot pass; and
  the reference evaluate used must be the registry's current champion. `require_improvement` names metrics the
  candidate must be better on with that confidence (the whole interval on the better side of 0): with
  `preference.win_rate` a preference-tuned candidate is promoted only when users' held-out pairs prefer it to
  the champion.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.models.registry import Champion, ChampionInfo, flat_metrics
from pipelines.security.gate_rules import SecurityGate, security_checks


class Floors(StageConfig):
    max_perplexity: float | None
    min_rouge_l: float | None
    max_attack_success_rate: float | None


class VersusChampion(StageConfig):
    max_perplexity_increase_pct: float | None
    max_rouge_l_drop: float | None
    max_attack_success_rate_increase: float | None


class VersusReference(StageConfig):
    """Decisions on evaluate's intervals of candidate - reference (metrics/evaluate.json `comparisons`)."""

    # `<task>.<metric>` -> X in the metric's units: reject when worse by more than X with the interval's confidence
    max_regression: dict[str, float]
    min_examples: int  # a compared task with fewer examples fails its check (too few to decide on)
    require_current_reference: bool  # evaluate's reference must be the current champion (the base without one)
    # `<task>.<metric>` the candidate must be better on than the reference, interval excluding 0 (e.g.
    # preference.win_rate); a missing interval fails
    require_improvement: list[str]


class Check(TypedDict):
    check: Literal["same_candidate", "floor", "versus_champion", "versus_reference", "min_examples", "reference",
                   "improvement"]
    metric: str | None
    observed: Any
    op: str | None
    threshold: Any
    passed: bool
    champion_value: NotRequired[float]
    champion_version: NotRequired[int]
    note: NotRequired[str]
    diff: NotRequired[float]  # versus_reference: candidate - reference, and its interval
    interval: NotRequired[list[float]]
    confidence: NotRequired[float]


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


def reference_checks(cfg: VersusReference, evaluate: dict, champion: Champion) -> list[Check]:
    """The interval checks of `cfg` on evaluate's `comparisons`, plus its example counts and reference."""
    checks: list[Check] = []
    info = champion.info
    ref = evaluate.get("reference_model")
    if cfg.require_current_reference:
        want = f"champion v{info['version']}" if info else "base"
        got = (f"champion v{ref.get('version')}" if ref.get("kind") == "champion" else str(ref.get("kind"))) if ref \
            else None
        # re-deciding on the candidate that already is the champion (a rerun after its own promotion) is idempotent
        is_champion = bool(info and info.get("adapter_sha256")
                           and info["adapter_sha256"] == evaluate.get("candidate_sha256"))
        passed = got == want or is_champion
        note = ("the candidate is the current champion" if is_champion and got != want else None) if passed else (
            "evaluate compared against another reference than the current champion: rerun evaluate "
            "(dvc repro -f evaluate)")
        checks.append({"check": "reference", "metric": "reference_model", "observed": got, "op": "==",
                       "threshold": want, "passed": passed, **({"note": note} if note else {})})
    comparisons = evaluate.get("comparisons") or {}
    n_examples = evaluate.get("n_examples") or {}
    tasks_seen: set[str] = set()
    for metric, tolerance in sorted(cfg.max_regression.items()):
        task = metric.split(".", 1)[0]
        iv = comparisons.get(metric)
        if iv is None:
            checks.append({"check": "versus_reference", "metric": metric, "observed": None, "op": None,
                           "threshold": tolerance, "passed": False,
                           "note": "no interval for this metric in the evaluate metrics (task off or renamed?)"})
            continue
        if task not in tasks_seen:
            tasks_seen.add(task)
            n = n_examples.get(task, iv.get("n"))
            checks.append(_check("min_examples", task, n, ">=", cfg.min_examples))
        if iv["better"] == "higher":  # worse = a negative difference; fails when even the interval's top is < -X
            checks.append(_check("versus_reference", metric, iv["ci_high"], ">=", -tolerance, diff=iv["diff"],
                                 interval=[iv["ci_low"], iv["ci_high"]], confidence=iv["confidence"]))
        else:  # worse = a positive difference; fails when even the interval's bottom is > X
            checks.append(_check("versus_reference", metric, iv["ci_low"], "<=", tolerance, diff=iv["diff"],
                                 interval=[iv["ci_low"], iv["ci_high"]], confidence=iv["confidence"]))
    for metric in cfg.require_improvement:
        iv = comparisons.get(metric)
        if iv is None:
            checks.append({"check": "improvement", "metric": metric, "observed": None, "op": None, "threshold": 0.0,
                           "passed": False, "note": "no interval for this metric in the evaluate metrics (task off?)"})
            continue
        task = metric.split(".", 1)[0]
        if task not in tasks_seen:
            tasks_seen.add(task)
            checks.append(_check("min_examples", task, n_examples.get(task, iv.get("n")), ">=", cfg.min_examples))
        higher = iv["better"] == "higher"
        bound = iv["ci_low"] if higher else iv["ci_high"]  # the interval's end nearest to "no better"
        passed = _finite(bound) and (bound > 0 if higher else bound < 0)
        checks.append({"check": "improvement", "metric": metric, "observed": bound, "op": ">" if higher else "<",
                       "threshold": 0.0, "passed": bool(passed), "diff": iv["diff"],
                       "interval": [iv["ci_low"], iv["ci_high"]], "confidence": iv["confidence"]})
    return checks


def decide(floors: Floors, versus: VersusChampion, evaluate: dict, audit: dict, champion: Champion,
           versus_reference: VersusReference | None = None, security: SecurityGate | None = None) -> Verdict:
    """The verdict on the candidate that the evaluate and audit metrics describe; StageFailed when nothing is
    configured to decide on (no floor and no champion)."""
    observed = flat_metrics(evaluate, audit)
    checks: list[Check] = []
    if versus_reference is not None:
        checks.extend(reference_checks(versus_reference, evaluate, champion))
    ev_hash, au_hash = evaluate.get("candidate_sha256"), audit.get("candidate_sha256")
    if ev_hash and au_hash:
        checks.append({"check": "same_candidate", "metric": "candidate_sha256", "observed": au_hash, "op": "==",
                       "threshold": ev_hash, "passed": ev_hash == au_hash})
    checks.extend(security_checks(security, audit) if security is not None else [])  # gate.security ceilings
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
