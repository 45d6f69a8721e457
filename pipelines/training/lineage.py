"""MLflow record of a fine-tuning run: params, per-step metrics and the lineage needed to reproduce the model.

Lineage tags: the dataset version (the `split` stage's output hash in `dvc.lock`, when the repo has one), the base
model (path and content hash: `dvc.lock`'s `prepare_base_model` output hash when present, else a sha256 of the
files), the code revision (`git rev-parse HEAD`, plus whether the tree was dirty). The promote stage attaches the
registered model version to this run (`training_meta.json: mlflow_run_id`). Where the run goes (tracking URI,
experiment and its artifact root) is the shared `registry` section.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Protocol

from pipelines.config import project_root
from pipelines.models.registry import RegistryConfig, ensure_experiment, flat_params


class TrainingInputs(Protocol):
    """The finetune settings lineage records, as configured (relative paths; the stage's config has them)."""

    base_model_dir: str
    train_path: str
    eval_path: str


def _dvc_lock_outs() -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock; empty when there is none."""
    lock = project_root() / "dvc.lock"
    if not lock.exists():
        return {}
    import yaml

    data = yaml.safe_load(lock.read_text()) or {}
    out: dict[str, dict[str, str]] = {}
    for stage, spec in (data.get("stages") or {}).items():
        out[stage] = {o["path"]: o.get("md5") or o.get("etag") or "" for o in spec.get("outs", []) if "path" in o}
    return out


def _files_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def git_revision() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    rev = git("rev-parse", "HEAD")
    return {"git_commit": rev or "unknown", "git_dirty": str(bool(git("status", "--porcelain"))).lower() if rev else "unknown"}


def lineage(cfg: TrainingInputs, wc: dict) -> dict[str, str]:
    """Lineage tags of a run; `wc` is the worker config (its `base_model_dir` is the absolute path hashed)."""
    outs = _dvc_lock_outs()
    tags = {"llmops.stage": "finetune", "base_model.path": cfg.base_model_dir, **git_revision()}
    split_outs = outs.get("split", {})
    tags["dataset.version"] = ",".join(f"{p}:{h}" for p, h in sorted(split_outs.items())) or "unversioned"
    base_hash = outs.get("prepare_base_model", {}).get(cfg.base_model_dir)
    tags["base_model.hash"] = f"dvc-md5:{base_hash}" if base_hash else f"sha256:{_files_sha256(Path(wc['base_model_dir']))}"
    tags["dataset.train_path"] = cfg.train_path
    tags["dataset.eval_path"] = cfg.eval_path
    return tags


def log_finetune_run(registry: RegistryConfig, cfg: TrainingInputs, wc: dict, meta: dict, losses: list[float],
                     eval_history: list[tuple[int, float]]) -> str:
    """One MLflow run with params, per-step `train_loss` / `eval_loss`, summary metrics and lineage tags."""
    import time

    from mlflow.entities import Metric, Param

    from pipelines.models.registry import client as mlflow_client

    client = mlflow_client(registry.tracking_uri)
    exp_id = ensure_experiment(client, registry).experiment_id
    tags = lineage(cfg, wc)
    run = client.create_run(exp_id, run_name=f"finetune-{tags['git_commit'][:8]}", tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flat_params(meta["params"]).items()]
        metrics = [Metric("train_loss", v, now, i) for i, v in enumerate(losses, start=1)]
        metrics += [Metric("eval_loss", v, now, s) for s, v in eval_history]
        for key in ("tokens_per_second", "train_seconds", "seconds", "trainable_params", "final_train_loss"):
            metrics.append(Metric(key, float(meta[key]), now, int(meta["steps"])))
        dpo = meta.get("dpo")
        if dpo:  # objective dpo: TRL's names for the per-step implicit-reward figures
            metrics += [Metric("rewards/accuracies", v, now, i) for i, v in enumerate(dpo["reward_accuracies"], 1)]
            metrics += [Metric("rewards/margins", v, now, i) for i, v in enumerate(dpo["reward_margins"], 1)]
            for key in ("eval_reward_accuracy", "eval_reward_margin"):
                if dpo[key] == dpo[key]:  # not nan (no held-out pairs)
                    metrics.append(Metric(f"dpo_{key}", float(dpo[key]), now, int(meta["steps"])))
            ref = dpo["reference"]
            client.set_tag(run_id, "dpo.reference", ref["kind"] + (f":v{ref['version']}" if ref.get("version") else ""))
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
