"""promote: record the gate's decision in MLflow and, on "promote", make the candidate the champion.

On promote:
1. one MLflow run (experiment `experiment_name`, whose artifact location is `artifact_root` inside the repo, set
   when the experiment is created) with the flat evaluate/audit metrics, the training params, the adapter
   directory as artifacts under `candidate/` plus `candidate/llmops_spec.json` naming the base model, and the
   gate decision / metrics files under `gate/`;
2. a new version of `model_name` whose source is that artifact directory (MLflow 3's `register_model` wants an
   MLmodel file or a LoggedModel, so the version is created with `MlflowClient.create_model_version`), tagged
   with the adapter hash and the gate decision;
3. the alias `champion` moves to it. The previous champion keeps its version number (rollback = moving the alias
   back: `pipelines.models.registry.set_alias`).
Idempotent per candidate: a version whose `adapter_sha256` tag equals the candidate's hash is reused (the alias
is moved to it if needed), never duplicated.

On reject: nothing is registered and no alias moves (a challenger alias would invite serving an unvetted model);
the rejection is recorded as an MLflow run tagged `llmops.decision=reject` (once per candidate hash) and in the
promotion record. The promotion record JSON says what happened either way.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pipelines.config import StageConfig
from pipelines.io import read_json, write_json
from pipelines.errors import StageFailed

SECTION = "promote"


class Config(StageConfig):
    decision: str = "reports/gate_decision.json"
    evaluate_metrics: str = "metrics/evaluate.json"
    audit_metrics: str = "metrics/audit.json"
    candidate_dir: str = "models/candidate"
    base_model_dir: str = "models/base"
    model_name: str = "llmops-candidate"
    tracking_uri: str = "sqlite:///mlruns.db"
    experiment_name: str = "llmops-lifecycle"
    artifact_root: str = "mlartifacts"
    alias: str = "champion"
    record: str = "reports/promotion.json"


def _experiment_id(client, cfg: Config) -> tuple[str, str]:
    from pipelines.models.registry import resolve_path

    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        return exp.experiment_id, exp.artifact_location
    location = resolve_path(cfg.artifact_root).resolve()
    location.mkdir(parents=True, exist_ok=True)
    exp_id = client.create_experiment(cfg.experiment_name, artifact_location=location.as_uri())
    return exp_id, location.as_uri()


def _scalar_params(meta: dict, prefix: str) -> dict[str, str]:
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict):
            out.update(_scalar_params(v, f"{prefix}{k}."))
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[f"{prefix}{k}"] = str(v)[:500]
        elif isinstance(v, list) and len(str(v)) <= 500:
            out[f"{prefix}{k}"] = str(v)
    return out


def _existing_version(client, name: str, adapter_hash: str):
    from mlflow.exceptions import MlflowException

    from pipelines.models.registry import HASH_TAG

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    matches = [v for v in versions if (v.tags or {}).get(HASH_TAG) == adapter_hash]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def _log_candidate_run(client, exp_id: str, cfg: Config, decision: dict, adapter_hash: str, status: str) -> str:
    from pipelines.models.registry import ADAPTER_ARTIFACT_PATH, HASH_TAG, SPEC_FILE, flat_metrics, resolve_path

    evaluate = read_json(cfg.evaluate_metrics) if Path(cfg.evaluate_metrics).exists() else {}
    audit = read_json(cfg.audit_metrics) if Path(cfg.audit_metrics).exists() else {}
    run = client.create_run(exp_id, run_name=f"{status}-{adapter_hash[:12]}", tags={
        HASH_TAG: adapter_hash, "llmops.decision": decision["decision"], "llmops.stage": "promote",
    })
    run_id = run.info.run_id
    try:
        meta_path = Path(cfg.candidate_dir) / "training_meta.json"
        meta = read_json(meta_path) if meta_path.exists() else {}
        params = {"base_model_dir": cfg.base_model_dir, "candidate_dir": cfg.candidate_dir,
                  **_scalar_params(meta if isinstance(meta, dict) else {}, "train.")}
        for k, v in list(params.items())[:100]:
            client.log_param(run_id, k, v)
        for k, v in flat_metrics(evaluate, audit).items():
            client.log_metric(run_id, k, v)
        with tempfile.TemporaryDirectory() as tmp:
            gate_dir = Path(tmp) / "gate"
            gate_dir.mkdir()
            for src in (cfg.decision, cfg.evaluate_metrics, cfg.audit_metrics):
                if Path(src).exists():
                    (gate_dir / Path(src).name).write_bytes(Path(src).read_bytes())
            client.log_artifacts(run_id, str(gate_dir), "gate")
            if status == "promote":
                client.log_artifacts(run_id, cfg.candidate_dir, ADAPTER_ARTIFACT_PATH)
                spec = {
                    "format": "peft-lora-adapter",
                    "base_model": cfg.base_model_dir,
                    "base_model_abs": str(resolve_path(cfg.base_model_dir).resolve()),
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


def _finetune_run(client, cfg: Config):
    """The MLflow run the finetune stage logged for this candidate (`training_meta.json: mlflow_run_id`), if it is
    in this tracking store: the registered version is attached to it and carries its lineage tags."""
    from mlflow.exceptions import MlflowException

    meta_path = Path(cfg.candidate_dir) / "training_meta.json"
    meta = read_json(meta_path) if meta_path.exists() else {}
    run_id = meta.get("mlflow_run_id") if isinstance(meta, dict) else None
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def run(cfg: Config) -> dict:
    from mlflow.exceptions import MlflowException

    from pipelines.models import registry
    from pipelines.models.lm import dir_sha256

    started = time.perf_counter()
    if not Path(cfg.decision).exists():
        raise FileNotFoundError(f"promote: gate decision not found: {cfg.decision} (run the gate stage)")
    decision = read_json(cfg.decision)
    if decision.get("decision") not in ("promote", "reject"):
        raise StageFailed(f"promote: {cfg.decision} has no valid 'decision' field")
    adapter_hash = dir_sha256(cfg.candidate_dir)
    decided_hash = decision.get("candidate_sha256")
    if decided_hash and decided_hash != adapter_hash:
        raise StageFailed(
            f"promote: the gate decided on candidate {decided_hash[:12]} but {cfg.candidate_dir} is now "
            f"{adapter_hash[:12]}; rerun evaluate, audit and gate"
        )
    client = registry.client(cfg.tracking_uri)
    exp_id, artifact_location = _experiment_id(client, cfg)
    previous = registry.get_alias_version(client, cfg.model_name, cfg.alias)
    record = {
        "decision": decision["decision"],
        "model_name": cfg.model_name,
        "alias": cfg.alias,
        "adapter_sha256": adapter_hash,
        "tracking_uri": registry.resolve_tracking_uri(cfg.tracking_uri),
        "experiment_id": exp_id,
        "artifact_location": artifact_location,
        "previous_champion": int(previous.version) if previous else None,
        "gate_decision": cfg.decision,
    }

    if decision["decision"] == "reject":
        runs = client.search_runs([exp_id], filter_string=(
            f"tags.{registry.HASH_TAG} = '{adapter_hash}' and tags.`llmops.decision` = 'reject'"), max_results=1)
        run_id = runs[0].info.run_id if runs else _log_candidate_run(client, exp_id, cfg, decision, adapter_hash, "reject")
        record.update(action="recorded_rejection", run_id=run_id, version=None,
                      champion=record["previous_champion"], already_recorded=bool(runs),
                      failed=decision.get("failed", []))
    else:
        existing = _existing_version(client, cfg.model_name, adapter_hash)
        if existing is not None:
            version, run_id, created = existing, existing.run_id, False
        else:
            try:
                client.create_registered_model(cfg.model_name, description="LoRA adapters promoted by the LLMOps gate")
            except MlflowException as exc:
                if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                    raise
            run_id = _log_candidate_run(client, exp_id, cfg, decision, adapter_hash, "promote")
            source = f"{client.get_run(run_id).info.artifact_uri}/{registry.ADAPTER_ARTIFACT_PATH}"
            # lineage: attach the version to the finetune run (params, loss curve, dataset/base/code) when known
            finetune_run = _finetune_run(client, cfg)
            lineage = {k: v for k, v in (finetune_run.data.tags if finetune_run else {}).items()
                       if k.startswith(("dataset.", "base_model.", "git_"))}
            version = client.create_model_version(cfg.model_name, source=source, run_id=(
                finetune_run.info.run_id if finetune_run else run_id), tags={
                **lineage,
                "promote_run_id": run_id,
                registry.HASH_TAG: adapter_hash,
                "gate_decision": "promote",
                "previous_champion": str(record["previous_champion"]),
            }, description=f"adapter {adapter_hash[:12]} promoted by the gate")
            created = True
        moved = previous is None or int(previous.version) != int(version.version)
        if moved:
            client.set_registered_model_alias(cfg.model_name, cfg.alias, version.version)
        record.update(action="promoted" if moved else "already_champion", run_id=run_id,
                      version=int(version.version), champion=int(version.version),
                      created_version=created, alias_moved=moved, source=version.source)
    record["seconds"] = round(time.perf_counter() - started, 2)
    write_json(cfg.record, record)
    return {k: record[k] for k in ("decision", "action", "version", "champion", "previous_champion")} | {
        "record": cfg.record}
