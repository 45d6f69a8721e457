"""gate: decide whether the candidate may replace the champion.

The checks (absolute floors, evaluate's paired intervals against its reference, regressions versus the champion `registry.model_name@registry.alias` at
`registry.tracking_uri`, same candidate in evaluate and audit) are `pipelines.models.gating`; this stage reads the
metrics files, finds the champion and writes the decision, each check with observed value, threshold and outcome.

A reject is a result, not an error: the decision JSON is written and the stage succeeds, so the pipeline
records it and promote registers nothing. Set `fail_on_reject: true` to make a reject stop the run instead.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, TypedDict

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import read_json, write_json
from pipelines.models.gating import Floors, Verdict, VersusChampion, VersusReference, decide
from pipelines.models.registry import RegistryConfig, find_champion
from pipelines.security.gate_rules import SecurityGate

SECTION = "gate"


class Config(StageConfig):
    evaluate_metrics: str
    audit_metrics: str
    floors: Floors
    versus_champion: VersusChampion  # only when the registry's alias names a version
    versus_reference: VersusReference  # on evaluate's paired intervals (candidate - champion/base, same examples)
    security: SecurityGate  # ceilings on the audit's guarded/unguarded ASR and leak rates (issue 15)
    fail_on_reject: bool
    decision: str


class MetricsFile(TypedDict):
    path: str
    sha256: str


class GateInputs(TypedDict):
    evaluate_metrics: MetricsFile
    audit_metrics: MetricsFile
    model_name: str
    alias: str
    floors: dict
    versus_champion: dict
    versus_reference: dict


class GateDecision(Verdict):
    """reports/gate_decision.json: the verdict plus what it was decided on."""

    inputs: GateInputs


class GateReport(TypedDict):
    decision: Literal["promote", "reject"]
    champion: int | None
    failed: list[str]
    decision_path: str


def _metrics_file(path: str) -> MetricsFile:
    return {"path": path, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def run(cfg: Config, registry: RegistryConfig) -> GateReport:
    for path in (cfg.evaluate_metrics, cfg.audit_metrics):
        if not Path(path).exists():
            raise FileNotFoundError(f"gate: metrics file not found: {path} (run evaluate and audit first)")
    evaluate, audit = read_json(cfg.evaluate_metrics), read_json(cfg.audit_metrics)
    verdict = decide(cfg.floors, cfg.versus_champion, evaluate, audit, find_champion(registry), cfg.versus_reference,
                     cfg.security)
    result: GateDecision = {**verdict, "inputs": {  # type: ignore[typeddict-item]
        "evaluate_metrics": _metrics_file(cfg.evaluate_metrics),
        "audit_metrics": _metrics_file(cfg.audit_metrics),
        "model_name": registry.model_name,
        "alias": registry.alias,
        "floors": cfg.floors.model_dump(),
        "versus_champion": cfg.versus_champion.model_dump(),
        "versus_reference": cfg.versus_reference.model_dump(),
        "security": cfg.security.model_dump(),
    }}
    write_json(cfg.decision, result)
    if result["decision"] == "reject" and cfg.fail_on_reject:
        raise StageFailed(f"gate rejected the candidate ({'; '.join(result['failed'])}); decision in {cfg.decision}")
    return {"decision": result["decision"], "champion": result["champion"], "failed": result["failed"],
            "decision_path": cfg.decision}
