"""finetune: LoRA SFT of the base model on the instruction rows of the train split, through Ray Train.

`TorchTrainer` runs `num_workers` data-parallel workers (DDP; gloo on CPU, NCCL with `use_gpu`). Each worker
formats the instruction rows with the tokenizer's chat template (loss on the assistant answer only), trains
`max_steps` AdamW steps on a seeded, deterministic shard of the data and reports the mean loss every step;
at the end the eval loss over the eval split is computed and rank 0 saves the LoRA adapter plus the tokenizer
as the run's checkpoint. The driver copies that checkpoint into `output_dir` (atomically) with
`training_meta.json`, writes the metrics JSON and the loss curve CSV for `dvc plots`.

The evaluation stage loads the result with `PeftModel.from_pretrained(base, output_dir)`.

Start-up cost (measured on the 2-core dev box while other jobs loaded it to load average 5-11, so treat these
as upper bounds; `startup_breakdown` in the metrics records them for every run):
  trivial 2-worker TorchTrainer, defaults: ray.init 30 s (GCS, then autoscaler monitor, dashboard, raylet,
  log monitor, runtime-env agent and dashboard agent start in turn, each a Python process importing ray),
  `import ray.train` 8 s, controller actor 12 s, autoscaling-coordinator request 5 s (it times out while that
  actor process starts), 2 worker actors 25 s, train context (torch import, gloo rendezvous: 0.15 s) 9 s.
  This stage, 8 steps: ray_init 38 s, import+build 10 s, workers up 97 s, worker imports 13 s, data+model 5 s,
  i.e. 163 s to the first step; 8 steps 73 s (52 tok/s); eval+save+shutdown 40 s.
Gloo rendezvous on the interface address (ray#59110) was not a problem locally (0.15 s). What the knobs in
`ray_engine.RAY_TRAIN_ENV_DEFAULTS` remove: the 2 s controller poll per state change, the preemption watcher
actor. The rest is process start-up that a small busy machine pays per Python process; a long-lived Ray
(`engines.ray.address: auto` with `ray start --head`) removes ray_init from every run.
"""
from __future__ import annotations

import csv
import io
import math
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import Field

from pipelines.config import StageConfig, project_root
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_dir, write_json, write_text

SECTION = "finetune"


class LoraParams(StageConfig):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class Config(StageConfig):
    base_model_dir: str = "models/base"
    train_path: str = "data/splits/train.parquet"
    eval_path: str = "data/splits/eval.parquet"
    output_dir: str = "models/candidate"
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    # CPUs reserved per worker, also its torch intra-op thread count
    cpus_per_worker: int = Field(1, gt=0)
    max_steps: int = Field(8, gt=0)
    per_device_batch_size: int = Field(2, gt=0)
    max_length: int = Field(128, gt=8)
    learning_rate: float = Field(5e-4, gt=0)
    seed: int = 42
    # float32 trains well on CPU; bfloat16 halves memory (GPU)
    dtype: str = "float32"
    # cap on eval rows scored at the end (the eval loss is token-weighted over these)
    max_eval_examples: int | None = Field(32, gt=0)
    lora: LoraParams = LoraParams()
    # Ray Train storage for the checkpoint; null: a temp dir on this machine (set a shared path/URI on a cluster)
    storage_path: str | None = None
    metrics: str = "metrics/finetune.json"
    loss_plot: str = "plots/finetune_loss.csv"


def _abs(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() or "://" in path else (project_root() / p).resolve())


def worker_config(cfg: Config) -> dict:
    """The plain dict each Train worker receives (absolute paths: workers run in their own working dir)."""
    return {
        "base_model_dir": _abs(cfg.base_model_dir),
        "train_path": _abs(cfg.train_path),
        "eval_path": _abs(cfg.eval_path),
        "max_steps": cfg.max_steps,
        "per_device_batch_size": cfg.per_device_batch_size,
        "max_length": cfg.max_length,
        "learning_rate": cfg.learning_rate,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "max_eval_examples": cfg.max_eval_examples,
        "threads_per_worker": cfg.cpus_per_worker,
        "lora": cfg.lora.model_dump(),
    }


def _check_inputs(wc: dict) -> None:
    if not (Path(wc["base_model_dir"]) / "config.json").exists():
        raise FileNotFoundError(
            f"finetune.base_model_dir: no model at {wc['base_model_dir']}; run `llmops run prepare_base_model` first"
        )
    for key in ("train_path", "eval_path"):
        if "://" not in wc[key] and not Path(wc[key]).exists():
            raise FileNotFoundError(f"finetune.{key}: {wc[key]} not found; run `llmops run split` first")


def run(cfg: Config, engines: EnginesConfig | None = None) -> dict:
    t_stage = time.time()
    engines = engines or EnginesConfig()
    wc = worker_config(cfg)
    _check_inputs(wc)

    from pipelines.engines.ray_engine import init_ray, ray_train_env_defaults

    ray_train_env_defaults()  # before ray.init / TorchTrainer: these are read when the processes start
    init_ray(engines.ray)
    t_ray = time.time()

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.training.sft import train_loop_per_worker

    own_storage = cfg.storage_path is None
    storage = tempfile.mkdtemp(prefix="llmops-finetune-") if own_storage else cfg.storage_path
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=wc,
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
            ),
            run_config=RunConfig(name="finetune", storage_path=storage),
        )
        t_fit = time.time()
        result = trainer.fit()
        t_done = time.time()
        if result.error:
            raise result.error
        m = dict(result.metrics or {})
        if result.checkpoint is None:
            raise RuntimeError("finetune: the training run returned no checkpoint")

        losses = [float(x) for x in m["losses"]]
        if not all(math.isfinite(x) for x in losses) or not math.isfinite(m["eval_loss"]):
            raise RuntimeError(f"finetune: non-finite loss (train {losses}, eval {m['eval_loss']}); nothing saved")
        seconds = t_done - t_stage
        meta = {
            "base_model_dir": cfg.base_model_dir,
            "base_model_path": wc["base_model_dir"],
            "params": cfg.model_dump(),
            "steps": m["step"],
            "final_train_loss": losses[-1],
            "eval_loss": m["eval_loss"],
            "seconds": round(seconds, 2),
            "train_seconds": round(m["train_seconds"], 3),
            "tokens_per_second": round(m["tokens_per_second"], 1),
            "train_tokens": m["train_tokens"],
            "trainable_params": m["trainable_params"],
            "world_size": m["world_size"],
            "data": {"train": m["train_counts"], "eval": m["eval_counts"]},
        }
        with atomic_dir(_abs(cfg.output_dir)) as out:
            with result.checkpoint.as_directory() as ckpt:
                shutil.copytree(ckpt, out, dirs_exist_ok=True)
            write_json(out / "training_meta.json", meta)
    finally:
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)
    t_end = time.time()

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "loss"])
    for i, loss in enumerate(losses, start=1):
        writer.writerow([i, f"{loss:.6f}"])
    write_text(_abs(cfg.loss_plot), buf.getvalue())

    report = {
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "eval_loss": m["eval_loss"],
        "steps": m["step"],
        "tokens_per_second": round(m["tokens_per_second"], 1),
        "train_examples": m["train_counts"]["examples"],
        "eval_examples": m["eval_counts"]["examples"],
        "startup_seconds": round(m["t_first_step"] - t_stage, 2),
        "seconds": round(t_end - t_stage, 2),
        # where the start-up goes (wall clock, from stage start)
        "startup_breakdown": {
            "ray_init": round(t_ray - t_stage, 2),
            "trainer_import_and_build": round(t_fit - t_ray, 2),
            "workers_started": round(m["t_worker_enter"] - t_fit, 2),
            "worker_imports": round(m["t_worker_imported"] - m["t_worker_enter"], 2),
            "worker_data_and_model": round(m["t_first_step"] - m["t_worker_imported"], 2),
            "train": round(m["t_train_end"] - m["t_first_step"], 2),
            "eval_save_and_shutdown": round(t_done - m["t_train_end"], 2),
        },
        "output_dir": cfg.output_dir,
    }
    write_json(_abs(cfg.metrics), report)
    return report
