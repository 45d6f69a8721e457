"""Stage name -> module. The CLI, dvc.yaml commands and Airflow tasks all go through `run_stage`.

A stage's `run(cfg, **shared)` takes its own section's config plus, by keyword, the shared sections it needs
(`SHARED_SECTIONS`): a setting that several stages use is written once in params.yaml and handed to each.

`run_stage` meters every run (`pipelines.cost.meter`: wall, CPU-seconds of the process tree, peak RSS, GPU-seconds,
cost at the `cost` price table) and adds the figures as `resources` to the report and to the stage's metrics file.
"""
from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from pydantic import BaseModel

from pipelines.config import config_from_params, load_params, parse_section, project_root
from pipelines.cost.meter import ResourceMeter, Resources
from pipelines.cost.prices import SECTION as COST_SECTION
from pipelines.cost.prices import PriceTable
from pipelines.data.near_duplicates import NearDuplicate
from pipelines.engines.config import EnginesConfig
from pipelines.flywheel.config import FlywheelConfig
from pipelines.io import read_json, write_json
from pipelines.models.registry import RegistryConfig
from pipelines.rollout.config import RolloutConfig
from pipelines.security.guard import GuardConfig
from pipelines.validation.context import GxConfig

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
    "train_guard": "pipelines.stages.train_guard",
    "audit": "pipelines.stages.audit",
    "gate": "pipelines.stages.gate",
    "promote": "pipelines.stages.promote",
    "drift": "pipelines.stages.drift",
}

# `run` keyword -> (params.yaml section, its model). The same object goes to every stage that asks for it.
SHARED_SECTIONS: dict[str, tuple[str, type[BaseModel]]] = {
    "engines": ("engines", EnginesConfig),
    "registry": ("registry", RegistryConfig),
    "gx": ("gx", GxConfig),
    # what "near-duplicate" means: dedup drops by it, the validate suite measures by it
    "near_duplicate": ("dedup.near_duplicate", NearDuplicate),
    # the guard as deployed: serving enforces it, the audit measures attacks through it
    "guard": ("serve.guard", GuardConfig),
    # the price table: run_stage prices every stage's resources with it (evaluate.cost and serve.cost alias it)
    "cost": (COST_SECTION, PriceTable),
    # how a promoted version reaches traffic (direct, canary, shadow): promote starts the rollout
    "rollout": ("rollout", RolloutConfig),
    # how rated production answers become a landing batch (`llmops flywheel harvest`, the llmops_flywheel DAG)
    "flywheel": ("flywheel", FlywheelConfig),
}


def stage_module(name: str) -> ModuleType:
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; known: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def shared_sections_of(module: ModuleType) -> list[str]:
    """The shared sections (keywords of SHARED_SECTIONS) that the stage's `run` takes."""
    accepted = inspect.signature(module.run).parameters
    return [key for key in SHARED_SECTIONS if key in accepted]


def stage_config(name: str, params: Mapping[str, Any] | str | Path | None = None, **overrides: Any):
    """Stage `name`'s config from params.yaml with `overrides` merged in and validated (tests, benchmarks)."""
    module = stage_module(name)
    return config_from_params(module.SECTION, module.Config, overrides, params)


def shared_config(key: str, params: Mapping[str, Any] | str | Path | None = None, **overrides: Any):
    """A shared section's config (`engines`, `registry`, `gx`, `near_duplicate`) with `overrides` merged in."""
    section, model = SHARED_SECTIONS[key]
    return config_from_params(section, model, overrides, params)


# report keys that count the tokens a stage processed: its resources then carry `tokens` and `cost_per_1k_tokens_usd`
TOKEN_KEYS = ("train_tokens",)  # finetune: tokens trained on (all workers)


def metrics_file_of(cfg: BaseModel, since: float) -> Path | None:
    """The metrics JSON the stage wrote in this run: its config's `metrics` path (relative to the working directory,
    as the stage opened it, or to the project root), modified at or after `since` (a wall-clock time)."""
    path = getattr(cfg, "metrics", None)
    if not isinstance(path, str) or not path.endswith(".json") or "://" in path:
        return None
    candidates = [Path(path)] if Path(path).is_absolute() else [Path(path), project_root() / path]
    for candidate in candidates:
        if candidate.is_file() and candidate.stat().st_mtime >= since - 1.0:
            return candidate
    return None


def record_resources(metrics_path: Path, resources: Resources) -> None:
    """Merge `resources` into the metrics file (atomically: temp + rename)."""
    metrics = read_json(metrics_path)
    if isinstance(metrics, dict):
        write_json(metrics_path, {**metrics, "resources": resources})


def run_stage(name: str, params_path: str | Path | None = None) -> dict:
    """Load the stage's typed config (and the shared sections its `run` takes) from params.yaml and run it, metered:
    the report and the stage's metrics file get a `resources` block (pipelines.cost.meter)."""
    module = stage_module(name)
    params = load_params(params_path)
    cfg = parse_section(params, module.SECTION, module.Config)
    kwargs = {key: parse_section(params, *SHARED_SECTIONS[key]) for key in shared_sections_of(module)}
    prices = parse_section(params, *SHARED_SECTIONS["cost"])
    started, wall_start = time.perf_counter(), time.time()
    with ResourceMeter() as meter:
        report = dict(module.run(cfg, **kwargs))
    report.setdefault("stage_seconds", round(time.perf_counter() - started, 2))
    resources = meter.resources(prices)
    tokens = next((report[k] for k in TOKEN_KEYS if isinstance(report.get(k), int) and report[k] > 0), None)
    if tokens is not None:
        resources = {**resources, "tokens": tokens,
                     "cost_per_1k_tokens_usd": round(resources["cost_usd"] / tokens * 1000, 8)}
    report["resources"] = resources
    metrics_path = metrics_file_of(cfg, wall_start)
    if metrics_path is not None:
        record_resources(metrics_path, resources)
    return report
