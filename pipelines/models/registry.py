"""MLflow conventions shared by gate, promote and serving.

- Tracking URIs: a relative SQLite path (`sqlite:///mlruns.db`) is taken relative to the project root, so the
  CLI, dvc repro and Airflow tasks started from another directory all see the same registry.
- A candidate is a LoRA adapter *directory*, not an MLflow flavour. It is logged as run artifacts under
  `candidate/` (adapter, tokenizer, training_meta.json, plus `llmops_spec.json` naming the base model), and the
  model version is created with `MlflowClient.create_model_version(source=<run artifact uri>/candidate)`.
  (MLflow 3's `mlflow.register_model("runs:/...")` insists on an MLmodel file or a LoggedModel.)
- The champion is whatever version the alias `registry.alias` (`champion`) points at; the gate reads the champion's
  metrics from the run that produced it (the flat names of `flat_metrics`).
- Every setting (tracking URI, experiment, artifact root, model name, alias) comes from the one `registry` section
  of params.yaml (`RegistryConfig`), handed to each stage as its `registry` argument.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from pipelines.config import StageConfig, project_root

ADAPTER_ARTIFACT_PATH = "candidate"
SPEC_FILE = "llmops_spec.json"
HASH_TAG = "adapter_sha256"
# prompt versioning: the sha256 of the serving prompt templates (pipelines/serving/prompts/*.j2) when a version is
# registered; serving reports it next to the hash of the templates it runs
PROMPT_TAG = "prompt_templates_sha256"
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "serving" / "prompts"


def prompt_templates_sha256(directory: str | Path = PROMPTS_DIR) -> str | None:
    """Content hash of every `*.j2` prompt template (name + bytes, sorted); None when there are none."""
    import hashlib

    files = sorted(Path(directory).glob("*.j2"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


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


def get_alias_version(mlflow_client, model_name: str, alias: str):
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


class Experiment(NamedTuple):
    experiment_id: str
    artifact_location: str


def ensure_experiment(mlflow_client, registry: RegistryConfig) -> Experiment:
    """The experiment `registry.experiment_name`, created with its artifacts under `registry.artifact_root` (taken
    from the project root when relative) when it does not exist yet."""
    exp = mlflow_client.get_experiment_by_name(registry.experiment_name)
    if exp is not None:
        return Experiment(exp.experiment_id, exp.artifact_location)
    location = resolve_path(registry.artifact_root).resolve()
    location.mkdir(parents=True, exist_ok=True)
    exp_id = mlflow_client.create_experiment(registry.experiment_name, artifact_location=location.as_uri())
    return Experiment(exp_id, location.as_uri())


def flat_params(values: dict[str, Any], prefix: str = "", *, drop_long_lists: bool = False) -> dict[str, str]:
    """Nested settings as MLflow params (`lora.r` -> "8"), each value cut to MLflow's 500 characters.
    `drop_long_lists`: a list longer than that is left out instead of cut (promote: a loss history is no param);
    then values other than scalars and lists are left out too."""
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}.", drop_long_lists=drop_long_lists))
        elif not drop_long_lists or isinstance(v, (str, int, float, bool)) or v is None:
            out[f"{prefix}{k}"] = str(v)[:500]
        elif isinstance(v, list) and len(str(v)) <= 500:
            out[f"{prefix}{k}"] = str(v)
    return out


def existing_version(mlflow_client, name: str, adapter_hash: str):
    """The oldest version of `name` tagged with this adapter hash, or None (promotion is idempotent per hash)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow_client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    matches = [v for v in versions if (v.tags or {}).get(HASH_TAG) == adapter_hash]
    return min(matches, key=lambda v: int(v.version)) if matches else None


class ChampionInfo(TypedDict):
    name: str
    alias: str
    version: int
    run_id: str | None
    adapter_sha256: str | None  # the HASH_TAG of the version


class Champion(NamedTuple):
    info: ChampionInfo | None  # None: no registry yet, or no version has the alias
    metrics: dict[str, float]  # recorded with the champion ({} without one)


def find_champion(registry: RegistryConfig) -> Champion:
    """The version `registry.alias` points at and its recorded metrics; a registry that does not exist yet is
    not created as a side effect of looking."""
    uri = resolve_tracking_uri(registry.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return Champion(None, {})
    mlflow_client = client(registry.tracking_uri)
    version = get_alias_version(mlflow_client, registry.model_name, registry.alias)
    if version is None:
        return Champion(None, {})
    info: ChampionInfo = {"name": registry.model_name, "alias": registry.alias, "version": int(version.version),
                          "run_id": version.run_id, "adapter_sha256": (version.tags or {}).get(HASH_TAG)}
    return Champion(info, version_metrics(mlflow_client, version))


class AliasMove(TypedDict):
    model_name: str
    alias: str
    version: int
    previous_version: int | None


def set_alias(registry: RegistryConfig, version: int | str) -> AliasMove:
    """Point `registry.alias` at `version` of `registry.model_name` (rollback = moving the champion back); returns
    the previous and new version. A serving process picks the change up on `POST /admin/reload`."""
    c = client(registry.tracking_uri)
    c.get_model_version(registry.model_name, str(version))  # raises when the version does not exist
    previous = get_alias_version(c, registry.model_name, registry.alias)
    c.set_registered_model_alias(registry.model_name, registry.alias, str(version))
    return {"model_name": registry.model_name, "alias": registry.alias, "version": int(version),
            "previous_version": int(previous.version) if previous else None}
