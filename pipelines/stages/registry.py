"""Stage name -> module. The CLI, dvc.yaml commands and Airflow tasks all go through `run_stage`."""
from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from types import ModuleType

from pipelines.config import load_params, parse_section
from pipelines.engines.config import engines_from_params

STAGES: dict[str, str] = {
    "prepare_base_model": "pipelines.stages.prepare_base_model",
    "ingest": "pipelines.stages.ingest",
    "validate_raw": "pipelines.stages.validate_raw",
    "dedup": "pipelines.stages.dedup",
    "validate": "pipelines.stages.validate",
    "split": "pipelines.stages.split",
    "validate_splits": "pipelines.stages.validate_splits",
    "embed": "pipelines.stages.embed",
    "validate_embeddings": "pipelines.stages.validate_embeddings",
    "evaluate_retrieval": "pipelines.stages.evaluate_retrieval",
    "finetune": "pipelines.stages.finetune",
    "evaluate": "pipelines.stages.evaluate",
    "audit": "pipelines.stages.audit",
    "gate": "pipelines.stages.gate",
    "promote": "pipelines.stages.promote",
}


def stage_module(name: str) -> ModuleType:
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; known: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def run_stage(name: str, params_path: str | Path | None = None) -> dict:
    """Load the stage's typed config from params.yaml and run it; engines config is passed to stages that take it."""
    module = stage_module(name)
    params = load_params(params_path)
    cfg = parse_section(params, module.SECTION, module.Config)
    kwargs = {}
    if "engines" in inspect.signature(module.run).parameters:
        kwargs["engines"] = engines_from_params(params)
    started = time.perf_counter()
    report = module.run(cfg, **kwargs)
    report = dict(report or {})
    report.setdefault("stage_seconds", round(time.perf_counter() - started, 2))
    return report
