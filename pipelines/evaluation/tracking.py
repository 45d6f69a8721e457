"""The MLflow side of evaluate: the champion's adapter (an artifact of the run that registered it) and the
candidate's metrics on the candidate's own run (the finetune run named in training_meta.json)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from pipelines.io import read_json
from pipelines.models.registry import (HASH_TAG, RegistryConfig, client, get_alias_version, resolve_tracking_uri)


class Reference(TypedDict):
    kind: str  # "champion" | "base"
    version: int | None
    adapter_sha256: str | None
    source: str | None  # the champion version's artifact URI


class ChampionAdapter(NamedTuple):
    reference: Reference
    adapter_dir: str | None  # downloaded champion adapter; None: the reference is the base model


def champion_adapter(registry: RegistryConfig, dest: str | Path) -> ChampionAdapter:
    """The champion's adapter downloaded into `dest` (found by `registry.alias`), or the base model as the
    reference when there is no registry or no champion yet. A registry is not created by looking."""
    base: Reference = {"kind": "base", "version": None, "adapter_sha256": None, "source": None}
    uri = resolve_tracking_uri(registry.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return ChampionAdapter(base, None)
    c = client(registry.tracking_uri)
    version = get_alias_version(c, registry.model_name, registry.alias)
    if version is None:
        return ChampionAdapter(base, None)
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest), tracking_uri=uri)
    if not (Path(local) / "adapter_config.json").exists():
        raise FileNotFoundError(f"evaluate: champion v{version.version} of {registry.model_name} has no LoRA "
                                f"adapter at {version.source}")
    return ChampionAdapter({"kind": "champion", "version": int(version.version),
                            "adapter_sha256": (version.tags or {}).get(HASH_TAG), "source": version.source},
                           str(local))


def log_candidate_metrics(registry: RegistryConfig, candidate_dir: str, metrics: dict[str, float]) -> str | None:
    """Log `metrics` on the candidate's finetune run (training_meta.json: mlflow_run_id) when that run is in this
    tracking store; returns its id, or None when there is none to log on."""
    meta_path = Path(candidate_dir) / "training_meta.json"
    meta: Any = read_json(meta_path) if meta_path.exists() else {}
    run_id = meta.get("mlflow_run_id") if isinstance(meta, dict) else None
    if not run_id:
        return None
    uri = resolve_tracking_uri(registry.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    import time

    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    c = client(registry.tracking_uri)
    try:
        c.get_run(run_id)
    except MlflowException:
        return None
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())
             if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
    for i in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[i:i + 1000])
    return run_id
