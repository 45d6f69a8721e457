"""gate: decide whether the candidate may replace the champion.

Two kinds of checks, each written down with observed value, threshold and outcome:
- absolute floors (`floors`): perplexity ceiling, ROUGE-L floor, attack-success-rate ceiling;
- versus the champion (`versus_champion`), when the registry `model_name@champion` exists at `tracking_uri`:
  relative perplexity increase, ROUGE-L drop and ASR increase against the metrics recorded with the champion.
With no champion the floors alone decide. Evaluate and audit must describe the same candidate (same adapter
hash), otherwise the decision is a reject.

A reject is a result, not an error: the decision JSON is written and the stage succeeds, so the pipeline
records it and promote registers nothing. Set `fail_on_reject: true` to make a reject stop the run instead.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from pipelines.config import StageConfig
from pipelines.io import read_json, write_json
from pipelines.errors import StageFailed

SECTION = "gate"


class Floors(StageConfig):
    max_perplexity: float | None = None
    min_rouge_l: float | None = None
    max_attack_success_rate: float | None = None


class VersusChampion(StageConfig):
    max_perplexity_increase_pct: float | None = None
    max_rouge_l_drop: float | None = None
    max_attack_success_rate_increase: float | None = None


class Config(StageConfig):
    evaluate_metrics: str = "metrics/evaluate.json"
    audit_metrics: str = "metrics/audit.json"
    model_name: str = "llmops-candidate"
    tracking_uri: str = "sqlite:///mlruns.db"
    alias: str = "champion"
    floors: Floors = Floors()
    versus_champion: VersusChampion = VersusChampion()
    fail_on_reject: bool = False
    decision: str = "reports/gate_decision.json"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check(name: str, metric: str, observed: Any, op: str, threshold: float, **extra) -> dict:
    if not _finite(observed):
        passed = False
    elif op == "<=":
        passed = observed <= threshold
    else:
        passed = observed >= threshold
    return {"check": name, "metric": metric, "observed": observed, "op": op, "threshold": threshold,
            "passed": bool(passed), **extra}


def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_champion(cfg: Config) -> tuple[dict | None, dict[str, float]]:
    """(champion description, its recorded metrics), or (None, {}) when there is no registry or no champion."""
    from pipelines.models import registry

    uri = registry.resolve_tracking_uri(cfg.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None, {}  # no registry yet: do not create one as a side effect of deciding
    client = registry.client(cfg.tracking_uri)
    version = registry.get_alias_version(client, cfg.model_name, cfg.alias)
    if version is None:
        return None, {}
    info = {"name": cfg.model_name, "alias": cfg.alias, "version": int(version.version), "run_id": version.run_id,
            registry.HASH_TAG: (version.tags or {}).get(registry.HASH_TAG)}
    return info, registry.version_metrics(client, version)


def decide(cfg: Config, evaluate: dict, audit: dict, champion: dict | None, champion_metrics: dict[str, float]) -> dict:
    from pipelines.models.registry import flat_metrics

    observed = flat_metrics(evaluate, audit)
    checks: list[dict] = []
    ev_hash, au_hash = evaluate.get("candidate_sha256"), audit.get("candidate_sha256")
    if ev_hash and au_hash:
        checks.append({"check": "same_candidate", "metric": "candidate_sha256", "observed": au_hash, "op": "==",
                       "threshold": ev_hash, "passed": ev_hash == au_hash})
    f = cfg.floors
    if f.max_perplexity is not None:
        checks.append(_check("floor", "perplexity", observed.get("perplexity"), "<=", f.max_perplexity))
    if f.min_rouge_l is not None:
        checks.append(_check("floor", "rouge_l", observed.get("rouge_l"), ">=", f.min_rouge_l))
    if f.max_attack_success_rate is not None:
        checks.append(_check("floor", "attack_success_rate", observed.get("attack_success_rate"), "<=",
                             f.max_attack_success_rate))
    if champion is not None:
        v = cfg.versus_champion
        ref = champion_metrics
        version = champion["version"]
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
    if not any(c["check"] == "floor" for c in checks) and champion is None:
        raise StageFailed("gate: no floors configured and no champion to compare with: nothing to decide on")
    decision = "promote" if all(c["passed"] for c in checks) else "reject"
    return {
        "decision": decision,
        "reasons": checks,
        "failed": [f"{c['check']}:{c['metric']} observed {c['observed']} {c['op']} {c['threshold']} failed"
                   for c in checks if not c["passed"]],
        "champion": champion["version"] if champion else None,
        "champion_info": champion,
        "candidate_sha256": ev_hash or au_hash,
        "candidate_dir": evaluate.get("candidate_dir") or audit.get("candidate_dir"),
        "observed": observed,
        "champion_metrics": champion_metrics or None,
    }


def run(cfg: Config) -> dict:
    for path in (cfg.evaluate_metrics, cfg.audit_metrics):
        if not Path(path).exists():
            raise FileNotFoundError(f"gate: metrics file not found: {path} (run evaluate and audit first)")
    evaluate, audit = read_json(cfg.evaluate_metrics), read_json(cfg.audit_metrics)
    champion, champion_metrics = find_champion(cfg)
    result = decide(cfg, evaluate, audit, champion, champion_metrics)
    result["inputs"] = {
        "evaluate_metrics": {"path": cfg.evaluate_metrics, "sha256": _file_sha(cfg.evaluate_metrics)},
        "audit_metrics": {"path": cfg.audit_metrics, "sha256": _file_sha(cfg.audit_metrics)},
        "model_name": cfg.model_name,
        "alias": cfg.alias,
        "floors": cfg.floors.model_dump(),
        "versus_champion": cfg.versus_champion.model_dump(),
    }
    write_json(cfg.decision, result)
    if result["decision"] == "reject" and cfg.fail_on_reject:
        raise StageFailed(f"gate rejected the candidate ({'; '.join(result['failed'])}); decision in {cfg.decision}")
    return {"decision": result["decision"], "champion": result["champion"], "failed": result["failed"],
            "decision_path": cfg.decision}
