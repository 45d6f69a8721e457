"""finetune: SFT of the base model (LoRA through peft, or a full fine-tune) on the instruction rows of the train
split, through Ray Train.

`TorchTrainer` runs `num_workers` data-parallel workers (DDP; gloo on CPU, NCCL with `use_gpu`; `dtype: bfloat16`
on GPUs; `placement_strategy` decides how workers fill nodes). Each worker formats the instruction rows with the
tokenizer's chat template (loss on the assistant answer only), trains `max_steps` AdamW steps on a seeded,
deterministic shard of the data; every `eval_every` steps the held-out loss over the eval split is computed, every
`checkpoint_every` steps rank 0 writes a resumable checkpoint (trainable weights, optimizer state, step, epoch and
position in it, loss history) to `storage_path` (a local dir or an s3:// URI). When a worker dies, Ray
(`FailureConfig(max_failures)`) restarts the worker group and the loop resumes from `ray.train.get_checkpoint()`;
dropout masks are a function of (seed, rank, step), so the resumed steps draw what the uninterrupted run would have.
At the end rank 0 reports the adapter (or model) plus the tokenizer as the final checkpoint; the driver copies it
into `output_dir` (atomically) with `training_meta.json`, logs an MLflow run (params, per-step train/eval loss,
lineage: dataset version from dvc.lock, base-model hash, git revision; see `pipelines/training/lineage.py`) whose
id goes into `training_meta.json` for promote, and writes the metrics JSON and the loss CSV
(`step, loss, eval_loss`) for `dvc plots`. The MLflow tracking server and experiment are the shared `registry`
section (`finetune.mlflow.enabled` only switches the run on or off).

The evaluation stage loads the result with `PeftModel.from_pretrained(base, output_dir)`.

Start-up cost: `startup_breakdown` in the metrics records where the time from stage start to the first step goes,
and `bench/bench_finetune_startup.py` measures it (fresh processes; results in bench/results). Almost all of it is
Python start-up and imports in fresh processes: Ray's own (ray.init), then the controller, its synchronization
actor and one process per worker, each importing Ray Train, torch, transformers and peft. What this stage removes:
the DatasetManager and PlacementGroupCleaner actors and Train's metrics callbacks (`pipelines/training/trainer.py`),
the preemption watcher and the 2 s controller poll (`ray_engine.RAY_TRAIN_ENV_DEFAULTS`), usage stats; the
autoscaling coordinator is started right after ray.init so its process overlaps the driver's imports. A long-lived
Ray (`make ray-up`, then `LLMOPS_RAY_ADDRESS=auto` or `engines.ray.address: auto`) removes ray.init, and its warm
pool (`pipelines/engines/ray_warm_pool.py`) hands the run processes whose imports are already done; the stage
refills the pool for the next run after its own run ends.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

from pydantic import Field

from pipelines.config import StageConfig, absolute_path
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_dir, write_json, write_text
from pipelines.models.registry import RegistryConfig
from pipelines.security.canaries import make_canaries, training_examples
from pipelines.training.checkpoint_storage import checkpoint_storage
from pipelines.training.loss_curve import loss_curve_csv

SECTION = "finetune"


class LoraParams(StageConfig):
    r: int = Field(gt=0)
    alpha: int = Field(gt=0)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str]


class MlflowParams(StageConfig):
    enabled: bool  # where the run goes: the shared `registry` section


class CanaryParams(StageConfig):
    enabled: bool
    count: int = Field(ge=0)    # distinct secrets (pipelines.security.canaries)
    repeats: int = Field(ge=1)  # times each is added to the training examples
    seed: int


class DpoParams(StageConfig):
    beta: float = Field(gt=0)  # strength of the pull toward the reference (the KL penalty's inverse temperature)
    # the reference model: the champion (its adapter on the base; the base when there is none) or the base model
    reference: Literal["champion", "base"]


class Config(StageConfig):
    base_model_dir: str
    train_path: str
    eval_path: str
    output_dir: str
    num_workers: int = Field(gt=0)
    use_gpu: bool
    # CPUs reserved per worker, also its torch intra-op thread count
    cpus_per_worker: int = Field(gt=0)
    max_steps: int = Field(gt=0)
    per_device_batch_size: int = Field(gt=0)
    max_length: int = Field(gt=8)
    # batches of similar lengths (sorted inside windows of 8 batches, then shuffled): less padding per step
    length_bucketing: bool
    learning_rate: float = Field(gt=0)
    seed: int
    # float32 trains well on CPU; bfloat16 halves memory (GPU)
    dtype: str
    # cap on eval rows scored at the end (the eval loss is token-weighted over these)
    max_eval_examples: int | None = Field(gt=0)
    # lora: train a LoRA adapter (peft); full: every weight (output_dir then holds a whole model)
    method: Literal["lora", "full"]
    lora: LoraParams
    # sft: the instruction rows (chat SFT); dpo: the preference rows (prompt, chosen = response, rejected),
    # policy started from the champion's adapter when there is one (pipelines/training/dpo.py)
    objective: Literal["sft", "dpo"]
    dpo: DpoParams
    # Ray Train storage for checkpoints; null: a temp dir on this machine (set a shared path or s3:// URI on a
    # cluster: Ray writes it through pyarrow.fs)
    storage_path: str | None
    checkpoint_every: int = Field(ge=0)   # a resumable checkpoint every K steps (0: only the final model)
    checkpoints_to_keep: int = Field(gt=0)
    max_failures: int = Field(ge=-1)      # worker-group restarts (from the latest checkpoint); -1: unlimited
    eval_every: int = Field(ge=0)         # held-out loss every K steps (0: only at the end)
    # Ray placement of the workers: PACK fills a node first, SPREAD one per node (workers per node on a cluster)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
    mlflow: MlflowParams
    canaries: CanaryParams  # secrets planted in the training data for the audit's leak test (issue 15)
    metrics: str
    loss_plot: str


class StartupBreakdown(TypedDict):
    """Wall clock from stage start to the first step, and after (of the last attempt when a failure restarted it)."""

    ray_init: float
    trainer_import_and_build: float
    workers_started: float
    worker_imports: float
    worker_data_and_model: float
    worker_data: float  # tokenizer + tokenized splits
    worker_model: float  # model (+ LoRA)
    worker_ddp: float  # DDP wrap (initial weight sync)
    train: float
    eval_save_and_shutdown: float


class FinetuneReport(TypedDict):
    """metrics/finetune.json (also what `run` returns)."""

    train_loss_first: float
    train_loss_last: float
    eval_loss: float
    eval_history: list[tuple[int, float]]
    steps: int
    resumed_from_step: int | None
    tokens_per_second: float
    train_tokens: int  # tokens trained on in this run, all workers (run_stage prices them per 1k tokens)
    train_examples: int
    eval_examples: int
    startup_seconds: float
    worker_preloaded: bool
    seconds: float
    mlflow_run_id: str | None
    startup_breakdown: StartupBreakdown
    output_dir: str
    objective: str
    dpo: NotRequired[dict]


class TrainingMeta(TypedDict):
    """output_dir/training_meta.json, next to the adapter (promote logs it and follows `mlflow_run_id`)."""

    base_model_dir: str
    base_model_path: str
    method: str
    length_bucketing: bool
    params: dict
    steps: int
    final_train_loss: float
    eval_loss: float
    eval_history: list[tuple[int, float]]
    resumed_from_step: int | None
    seconds: float
    train_seconds: float
    tokens_per_second: float
    train_tokens: int
    trainable_params: int
    world_size: int
    data: dict
    objective: str
    dpo: NotRequired[dict]  # beta, per-step reward accuracies/margins, held-out reward accuracy, reference
    mlflow_run_id: NotRequired[str]
    mlflow_tracking_uri: NotRequired[str]


def worker_config(cfg: Config) -> dict:
    """The plain dict each Train worker receives (absolute paths: workers run in their own working dir)."""
    return {
        "base_model_dir": absolute_path(cfg.base_model_dir),
        "train_path": absolute_path(cfg.train_path),
        "eval_path": absolute_path(cfg.eval_path),
        "max_steps": cfg.max_steps,
        "per_device_batch_size": cfg.per_device_batch_size,
        "max_length": cfg.max_length,
        "learning_rate": cfg.learning_rate,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "max_eval_examples": cfg.max_eval_examples,
        "threads_per_worker": cfg.cpus_per_worker,
        "lora": cfg.lora.model_dump(),
        "method": cfg.method,
        "length_bucketing": cfg.length_bucketing,
        "eval_every": cfg.eval_every,
        "checkpoint_every": cfg.checkpoint_every,
        "objective": cfg.objective,
        "dpo": cfg.dpo.model_dump(),
    }


def _check_inputs(wc: dict) -> None:
    if not (Path(wc["base_model_dir"]) / "config.json").exists():
        raise FileNotFoundError(
            f"finetune.base_model_dir: no model at {wc['base_model_dir']}; run `llmops run prepare_base_model` first"
        )
    for key in ("train_path", "eval_path"):
        if "://" not in wc[key] and not Path(wc[key]).exists():
            raise FileNotFoundError(f"finetune.{key}: {wc[key]} not found; run `llmops run split` first")


def run(cfg: Config, engines: EnginesConfig, registry: RegistryConfig,
        _worker_overrides: dict | None = None) -> FinetuneReport:
    """`_worker_overrides` is for tests only (fault injection); params.yaml cannot reach it."""
    t_stage = time.time()
    wc = worker_config(cfg)
    # canaries are planted SFT examples; a DPO run trains on preference pairs only and plants none
    canaries = make_canaries(cfg.canaries.count, cfg.canaries.seed) if cfg.canaries.enabled and \
        cfg.objective == "sft" else []
    wc["canary_examples"] = training_examples(canaries, cfg.canaries.repeats)
    wc.update(_worker_overrides or {})
    _check_inputs(wc)
    champion_tmp = None
    reference: dict = {"kind": "base", "version": None}
    if cfg.objective == "dpo":
        # DPO starts from the champion (its adapter, trainable) and takes it as the reference when
        # dpo.reference is champion; the base model (fresh adapter) without one
        import tempfile

        from pipelines.evaluation.tracking import champion_adapter

        champion_tmp = tempfile.mkdtemp(prefix="llmops-dpo-champion-")
        champ = champion_adapter(registry, champion_tmp)
        if champ.adapter_dir is not None:
            if cfg.method != "lora":
                shutil.rmtree(champion_tmp, ignore_errors=True)
                raise ValueError("finetune: objective dpo starts from the champion's LoRA adapter; "
                                 "method: full cannot (set finetune.method: lora)")
            wc["init_adapter_dir"] = champ.adapter_dir
            reference = {"kind": "champion" if cfg.dpo.reference == "champion" else "base",
                         "version": champ.reference["version"], "adapter_sha256": champ.reference["adapter_sha256"]}

    from pipelines.engines import ray_warm_pool
    from pipelines.engines.ray_engine import init_ray, joined_cluster, ray_train_env_defaults, start_autoscaling_coordinator

    ray_train_env_defaults()  # before ray.init / TorchTrainer: these are read when the processes start
    init_ray(engines.ray)
    t_ray = time.time()
    local_ray = not joined_cluster()  # a Ray that goes away with this process
    # Ray's warm pool (pipelines/engines/ray_warm_pool.py) only on a long-lived Ray: there `make ray-up` and each
    # run's refill leave idle processes with Train's imports done. On a Ray started per run, prestarting with the
    # preload measured slower (21.5 s -> 27.1 s to the first step): every process then imports everything at once.
    warm = engines.ray.warm_pool and not local_ray
    prestart = None
    start_autoscaling_coordinator()  # its process starts while this one imports Ray Train

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipelines.training.sft import train_loop_per_worker
    from pipelines.training.trainer import LeanTorchTrainer

    storage, storage_fs, own_storage = checkpoint_storage(None if cfg.storage_path is None else absolute_path(cfg.storage_path))
    try:
        trainer = LeanTorchTrainer(
            train_loop_per_worker,
            train_loop_config=wc,
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
                placement_strategy=cfg.placement_strategy,
            ),
            run_config=RunConfig(
                name="finetune",
                storage_path=storage,
                storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            ),
            lean=local_ray,
        )
        t_fit = time.time()
        result = trainer.fit()
        t_done = time.time()
        if warm:
            # Leave warm processes for the next run on this long-lived Ray (this run's are gone with its actors).
            prestart = ray_warm_pool.prestart_in_background(cfg.num_workers, engines.ray.warm_pool_keep_alive_s)
        if result.error:
            raise result.error
        m = dict(result.metrics or {})
        if result.checkpoint is None:
            raise RuntimeError("finetune: the training run returned no checkpoint")

        losses = [float(x) for x in m["losses"]]
        eval_history = [(int(s_), float(v)) for s_, v in m["eval_history"]]
        # a DPO run may have no held-out pairs (small harvests): its eval loss is then nan, reported as such
        no_eval_pairs = cfg.objective == "dpo" and m["eval_counts"]["examples"] == 0
        if not all(math.isfinite(x) for x in losses) or not (math.isfinite(m["eval_loss"]) or no_eval_pairs):
            raise RuntimeError(f"finetune: non-finite loss (train {losses}, eval {m['eval_loss']}); nothing saved")
        seconds = t_done - t_stage
        meta: TrainingMeta = {
            "base_model_dir": cfg.base_model_dir,
            "base_model_path": wc["base_model_dir"],
            "method": cfg.method,
            "length_bucketing": cfg.length_bucketing,
            "params": cfg.model_dump(),
            "steps": m["step"],
            "final_train_loss": losses[-1],
            "eval_loss": m["eval_loss"],
            "eval_history": eval_history,
            "resumed_from_step": m["resumed_from_step"],
            "seconds": round(seconds, 2),
            "train_seconds": round(m["train_seconds"], 3),
            "tokens_per_second": round(m["tokens_per_second"], 1),
            "train_tokens": m["train_tokens"],
            "trainable_params": m["trainable_params"],
            "world_size": m["world_size"],
            "data": {"train": m["train_counts"], "eval": m["eval_counts"]},
            "objective": cfg.objective,
        }
        if cfg.objective == "dpo":
            meta["dpo"] = {**m["dpo"], "reference": reference, "started_from": reference.get("version")}
        if cfg.mlflow.enabled:
            from pipelines.training.lineage import log_finetune_run

            meta["mlflow_run_id"] = log_finetune_run(registry, cfg, wc, meta, losses, eval_history)
            meta["mlflow_tracking_uri"] = registry.tracking_uri
        with atomic_dir(absolute_path(cfg.output_dir)) as out:
            with result.checkpoint.as_directory() as ckpt:
                shutil.copytree(ckpt, out, dirs_exist_ok=True)
            write_json(out / "training_meta.json", meta)
            write_json(out / "canaries.json", {"repeats": cfg.canaries.repeats, "canaries": canaries})
    finally:
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)
        if champion_tmp is not None:
            shutil.rmtree(champion_tmp, ignore_errors=True)
    t_end = time.time()

    write_text(absolute_path(cfg.loss_plot), loss_curve_csv(losses, eval_history))

    report: FinetuneReport = {
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "eval_loss": m["eval_loss"],
        "eval_history": eval_history,
        "steps": m["step"],
        "resumed_from_step": m["resumed_from_step"],
        "tokens_per_second": round(m["tokens_per_second"], 1),
        "train_tokens": int(m["train_tokens"]),
        "train_examples": m["train_counts"]["examples"],
        "eval_examples": m["eval_counts"]["examples"],
        "startup_seconds": round(m["t_first_step"] - t_stage, 2),
        # rank 0's process had Train's imports done before the loop (preloaded by the raylet, `llmops ray up`)
        "worker_preloaded": bool(m.get("worker_preloaded", False)),
        "seconds": round(t_end - t_stage, 2),
        "mlflow_run_id": meta.get("mlflow_run_id"),
        # where the start-up goes (wall clock, from stage start; of the last attempt when a failure restarted it)
        "startup_breakdown": {
            "ray_init": round(t_ray - t_stage, 2),
            "trainer_import_and_build": round(t_fit - t_ray, 2),
            "workers_started": round(m["t_worker_enter"] - t_fit, 2),
            "worker_imports": round(m["t_worker_imported"] - m["t_worker_enter"], 2),
            "worker_data_and_model": round(m["t_first_step"] - m["t_worker_imported"], 2),
            # ... of which: tokenizer + tokenized splits, model (+ LoRA), DDP wrap (initial weight sync)
            "worker_data": round(m["t_data_ready"] - m["t_worker_imported"], 2),
            "worker_model": round(m["t_model_built"] - m["t_data_ready"], 2),
            "worker_ddp": round(m["t_ddp_ready"] - m["t_model_built"], 2),
            "train": round(m["t_train_end"] - m["t_first_step"], 2),
            "eval_save_and_shutdown": round(t_done - m["t_train_end"], 2),
        },
        "output_dir": cfg.output_dir,
        "objective": cfg.objective,
    }
    if cfg.objective == "dpo":
        d = m["dpo"]
        report["dpo"] = {"beta": d["beta"], "reference": meta["dpo"]["reference"],
                         "reward_accuracy_first": d["reward_accuracies"][0], "reward_accuracy_last":
                         d["reward_accuracies"][-1], "reward_margin_first": d["reward_margins"][0],
                         "reward_margin_last": d["reward_margins"][-1], "reward_margins": d["reward_margins"],
                         "eval_reward_accuracy": d["eval_reward_accuracy"],
                         "eval_reward_margin": d["eval_reward_margin"], "eval_pairs": d["eval_pairs"],
                         "reference_seconds": round(d["reference_seconds"], 2)}
    write_json(absolute_path(cfg.metrics), report)
    if prestart is not None:
        prestart.join(timeout=60)
    return report
