"""MLflow conventions shared by gate, promote and serving.

- Tracking URIs: a relative SQLite path (`sqlite:///mlruns.db`) is taken relative to the project root, so the
  CLI, dvc repro and Airflow tasks started from another directory all see the same registry.
- A candidate is a LoRA adapter *directory*, not an MLflow flavour. It is logged as run artifacts under
  `candidate/` (adapter, tokenizer, training_meta.json, plus `llmops_spec.json` naming the base model), and the
  model version is created with `MlflowClient.create_model_version(source=<run artifact uri>/candidate)`.
  (MLflow 3's `mlflow.register_model("runs:/...")` insists on an MLmodel file or a LoggedModel.)
- The champion is whatever version the alias `champion` points at; the gate reads the champion's metrics from
  the run that produced it (the flat names of `flat_metrics`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import StageConfig, project_root

CHAMPION = "champion"
ADAPTER_ARTIFACT_PATH = "candidate"
SPEC_FILE = "llmops_spec.json"
HASH_TAG = "adapter_sha256"


class RegistryConfig(StageConfig):
    """The `registry` section of params.yaml: the MLflow tracking server and registered model that finetune,
    gate, promote and serving share."""

    tracking_uri: str  # a relative sqlite:/// path is taken from the project root
    experiment_name: str
    artifact_root: str  # the experiment's artifact location when this project creates it (s3://... in production)
    model_name: str
    alias: str  # the alias that names the serving model


def resolve_tracking_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        rel = uri[len(prefix):]
        if rel and rel != ":memory:":
            return prefix + str((project_root() / rel).resolve())
    return uri


def resolve_path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (project_root() / p)


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_alias_version(mlflow_client, model_name: str, alias: str = CHAMPION):
    """The ModelVersion the alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def flat_metrics(evaluate: dict[str, Any] | None, audit: dict[str, Any] | None) -> dict[str, float]:
    """The numbers the gate compares and promote logs, with stable names."""
    out: dict[str, float] = {}
    if evaluate:
        cand = evaluate.get("candidate", {})
        base = evaluate.get("base", {})
        for key in ("perplexity", "rouge_l"):
            if key in cand and cand[key] is not None:
                out[key] = float(cand[key])
            if key in base and base[key] is not None:
                out[f"base_{key}"] = float(base[key])
    if audit:
        if audit.get("attack_success_rate") is not None:
            out["attack_success_rate"] = float(audit["attack_success_rate"])
        if audit.get("refusal_rate") is not None:
            out["refusal_rate"] = float(audit["refusal_rate"])
        for cat, value in (audit.get("per_category") or {}).items():
            if isinstance(value, dict) and value.get("attack_success_rate") is not None:
                out[f"asr_{cat}"] = float(value["attack_success_rate"])
    return out


def version_metrics(mlflow_client, version) -> dict[str, float]:
    """Metrics recorded for a model version (those of the run that registered it)."""
    if version is None or not version.run_id:
        return {}
    return dict(mlflow_client.get_run(version.run_id).data.metrics)


def set_alias(tracking_uri: str, model_name: str, version: int | str, alias: str = CHAMPION) -> dict:
    """Point `alias` at `version` (rollback = moving the champion back); returns the previous and new version.
    A serving process picks the change up on `POST /admin/reload`."""
    c = client(tracking_uri)
    c.get_model_version(model_name, str(version))  # raises when the version does not exist
    previous = get_alias_version(c, model_name, alias)
    c.set_registered_model_alias(model_name, alias, str(version))
    return {"model_name": model_name, "alias": alias, "version": int(version),
            "previous_version": int(previous.version) if previous else None}
