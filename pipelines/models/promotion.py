"""Putting a gated candidate into the MLflow registry (conventions in `pipelines.models.registry`).

- `log_candidate_run`: one MLflow run with the flat evaluate/audit metrics, the training params, the gate decision
  and metrics files under `gate/` and, for a promotion, the adapter directory under `candidate/` plus
  `candidate/llmops_spec.json` naming the base model.
- `register_candidate`: a new version of the model whose source is that artifact directory (MLflow 3's
  `register_model` wants an MLmodel file or a LoggedModel, so the version is created with
  `MlflowClient.create_model_version`), tagged with the adapter hash and the gate decision, and attached to the
  finetune stage's run when `training_meta.json` names one (its lineage tags are copied onto the version).
- `recorded_rejection`: the run that already recorded a reject of this adapter, so a rerun records it once.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import NamedTuple, Protocol

from pipelines.io import read_json
from pipelines.models.registry import (
    ADAPTER_ARTIFACT_PATH,
    HASH_TAG,
    PROMPT_TAG,
    SPEC_FILE,
    existing_version,
    flat_metrics,
    flat_params,
    prompt_templates_sha256,
    resolve_path,
)


class CandidateFiles(Protocol):
    """What promote knows about the candidate (its config has these fields)."""

    decision: str
    evaluate_metrics: str
    audit_metrics: str
    candidate_dir: str
    base_model_dir: str


def _training_meta(candidate_dir: str) -> dict:
    meta_path = Path(candidate_dir) / "training_meta.json"
    meta = read_json(meta_path) if meta_path.exists() else {}
    return meta if isinstance(meta, dict) else {}


def log_candidate_run(client, exp_id: str, files: CandidateFiles, decision: dict, adapter_hash: str,
                      status: str) -> str:
    """The promote stage's MLflow run for this candidate (`status`: promote or reject); returns its id."""
    evaluate = read_json(files.evaluate_metrics) if Path(files.evaluate_metrics).exists() else {}
    audit = read_json(files.audit_metrics) if Path(files.audit_metrics).exists() else {}
    run = client.create_run(exp_id, run_name=f"{status}-{adapter_hash[:12]}", tags={
        HASH_TAG: adapter_hash, "llmops.decision": decision["decision"], "llmops.stage": "promote",
    })
    run_id = run.info.run_id
    try:
        params = {"base_model_dir": files.base_model_dir, "candidate_dir": files.candidate_dir,
                  **flat_params(_training_meta(files.candidate_dir), "train.", drop_long_lists=True)}
        for k, v in list(params.items())[:100]:
            client.log_param(run_id, k, v)
        for k, v in flat_metrics(evaluate, audit).items():
            client.log_metric(run_id, k, v)
        with tempfile.TemporaryDirectory() as tmp:
            gate_dir = Path(tmp) / "gate"
            gate_dir.mkdir()
            for src in (files.decision, files.evaluate_metrics, files.audit_metrics):
                if Path(src).exists():
                    (gate_dir / Path(src).name).write_bytes(Path(src).read_bytes())
            client.log_artifacts(run_id, str(gate_dir), "gate")
            if status == "promote":
                client.log_artifacts(run_id, files.candidate_dir, ADAPTER_ARTIFACT_PATH)
                spec = {
                    "format": "peft-lora-adapter",
                    "base_model": files.base_model_dir,
                    "base_model_abs": str(resolve_path(files.base_model_dir).resolve()),
                    HASH_TAG: adapter_hash,
                    "load": "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), <this dir>)",
                }
                spec_path = Path(tmp) / SPEC_FILE
                spec_path.write_text(json.dumps(spec, indent=2))
                client.log_artifact(run_id, str(spec_path), ADAPTER_ARTIFACT_PATH)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def finetune_run(client, candidate_dir: str):
    """The MLflow run the finetune stage logged for this candidate (`training_meta.json: mlflow_run_id`), if it is
    in this tracking store: the registered version is attached to it and carries its lineage tags."""
    from mlflow.exceptions import MlflowException

    run_id = _training_meta(candidate_dir).get("mlflow_run_id")
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def recorded_rejection(client, exp_id: str, adapter_hash: str) -> str | None:
    """The id of the run that already recorded a reject of this adapter, if any."""
    runs = client.search_runs([exp_id], filter_string=(
        f"tags.{HASH_TAG} = '{adapter_hash}' and tags.`llmops.decision` = 'reject'"), max_results=1)
    return runs[0].info.run_id if runs else None


class Registered(NamedTuple):
    version: object  # mlflow ModelVersion
    run_id: str  # the promote run that logged its artifacts
    created: bool  # False: an existing version with this adapter hash was reused


def register_candidate(client, exp_id: str, model_name: str, files: CandidateFiles, decision: dict,
                       adapter_hash: str, previous_champion: int | None) -> Registered:
    """The model version holding this adapter: the existing one with its hash (promotion is idempotent per
    candidate), else a new one logged and registered now."""
    from mlflow.exceptions import MlflowException

    existing = existing_version(client, model_name, adapter_hash)
    if existing is not None:
        return Registered(existing, existing.run_id, False)
    try:
        client.create_registered_model(model_name, description="LoRA adapters promoted by the LLMOps gate")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    run_id = log_candidate_run(client, exp_id, files, decision, adapter_hash, "promote")
    source = f"{client.get_run(run_id).info.artifact_uri}/{ADAPTER_ARTIFACT_PATH}"
    # lineage: attach the version to the finetune run (params, loss curve, dataset/base/code) when known
    trained_by = finetune_run(client, files.candidate_dir)
    lineage = {k: v for k, v in (trained_by.data.tags if trained_by else {}).items()
               if k.startswith(("dataset.", "base_model.", "git_"))}
    version = client.create_model_version(model_name, source=source, run_id=(
        trained_by.info.run_id if trained_by else run_id), tags={
        **lineage,
        "promote_run_id": run_id,
        HASH_TAG: adapter_hash,
        **({PROMPT_TAG: prompt_hash} if (prompt_hash := prompt_templates_sha256()) else {}),
        "gate_decision": "promote",
        "previous_champion": str(previous_champion),
    }, description=f"adapter {adapter_hash[:12]} promoted by the gate")
    return Registered(version, run_id, True)
