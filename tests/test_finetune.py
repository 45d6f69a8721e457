"""finetune stage: prompt masking, deterministic data path, and one real 2-worker Ray Train run on tiny data."""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.stages import finetune
from pipelines.stages.registry import shared_config, stage_config
from pipelines.training.sft import IGNORE_INDEX, format_example, global_batches, shard_batches, tokenize_split

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "sample" / "raw" / "gpteacher_roleplay.json"


def _tiny_split(path: Path, start: int, n: int) -> Path:
    records = json.loads(RAW.read_text(encoding="utf-8"))[start:start + n]
    rows = [
        {
            "doc_id": f"gp{start + i}",
            "kind": "instruction",
            "prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""),
            "response": r["response"],
            "text": r["response"],
        }
        for i, r in enumerate(records)
    ]
    rows.append({"doc_id": "doc0", "kind": "document", "prompt": None, "response": None, "text": "A document."})
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def test_prompt_tokens_are_masked(tokenizer):
    ex = format_example(tokenizer, "What is the capital of France?", "Paris.", max_length=512)
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert len(ex["input_ids"]) == len(ex["labels"]) > n_prompt
    assert all(label == IGNORE_INDEX for label in ex["labels"][:n_prompt])
    answer = ex["labels"][n_prompt:]
    assert all(label != IGNORE_INDEX for label in answer)
    assert answer == ex["input_ids"][n_prompt:]
    assert "Paris." in tokenizer.decode(answer)
    assert tokenizer.decode(answer).rstrip().endswith(tokenizer.eos_token)  # the model learns to stop


def test_truncation_and_prompt_only_examples(tokenizer):
    ex = format_example(tokenizer, "Say hi.", "word " * 200, max_length=40)
    assert len(ex["input_ids"]) == len(ex["labels"]) == 40
    # a prompt longer than max_length leaves nothing to learn: the example is dropped, not trained on
    assert format_example(tokenizer, "long prompt " * 100, "answer", max_length=32) is None


def test_data_path_is_deterministic(tokenizer, tmp_path):
    path = _tiny_split(tmp_path / "train.parquet", 0, 10)
    a, counts = tokenize_split(tokenizer, str(path), 64)
    b, _ = tokenize_split(tokenizer, str(path), 64)
    assert a == b
    assert counts["rows"] == 11 and counts["instruction_rows"] == 10 and counts["skipped_rows"] == 1
    assert shard_batches(10, 2, 0, 2, 42, 0) == shard_batches(10, 2, 0, 2, 42, 0)
    assert shard_batches(10, 2, 0, 2, 42, 0) != shard_batches(10, 2, 0, 2, 42, 1)  # reshuffled each epoch
    r0, r1 = shard_batches(10, 2, 0, 2, 42, 0), shard_batches(10, 2, 1, 2, 42, 0)
    assert len(r0) == len(r1)  # DDP: every rank takes the same number of steps
    assert not {i for b in r0 for i in b} & {i for b in r1 for i in b}  # ranks see disjoint rows

    # length bucketing: same rows per rank and epoch, batches of similar lengths, still deterministic
    lengths = [5, 50, 7, 48, 6, 52, 9, 47, 8, 51, 5, 49]
    plain = shard_batches(12, 2, 0, 2, 42, 0)
    bucketed = shard_batches(12, 2, 0, 2, 42, 0, lengths=lengths)
    assert bucketed == shard_batches(12, 2, 0, 2, 42, 0, lengths=lengths)
    assert sorted(i for b in bucketed for i in b) == sorted(i for b in plain for i in b)
    spread = lambda bs: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert spread(bucketed) <= spread(plain)

    # one process's view of a 2-rank run (the benchmarks' baselines): each step joins the ranks' batches, and the
    # steps go on into the next epoch's shuffle
    steps = list(global_batches(10, 2, 2, 42, 5))
    epoch0 = [r0[i] + r1[i] for i in range(len(r0))]
    assert [s for s, _ in steps] == [0, 1, 2, 3, 4] and [b for _, b in steps[:2]] == epoch0
    assert steps[2][1] == shard_batches(10, 2, 0, 2, 42, 1)[0] + shard_batches(10, 2, 1, 2, 42, 1)[0]
    with pytest.raises(ValueError, match="no batch"):
        list(global_batches(3, 2, 2, 42, 1))


def test_finetune_two_workers_survives_a_worker_failure(ray_local, base_model_dir, tmp_path, s3_bucket,
                                                        s3_server, monkeypatch):
    """One real 2-worker run: checkpoints every 2 steps to S3 (moto_server), eval loss every 2 steps, rank 1
    killed (os._exit) after step 3 on the first attempt only; Ray restarts the worker group, which resumes from
    the step-2 checkpoint it reads back from S3."""
    bucket, s3 = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["aws_secret_access_key"])
    cfg = stage_config(
        "finetune",
        base_model_dir=str(base_model_dir),
        train_path=str(_tiny_split(tmp_path / "train.parquet", 0, 12)),
        eval_path=str(_tiny_split(tmp_path / "eval.parquet", 100, 4)),
        output_dir=str(tmp_path / "candidate"),
        num_workers=2,
        max_steps=4,
        checkpoint_every=2,
        eval_every=2,
        max_failures=1,
        per_device_batch_size=1,
        max_length=96,
        max_eval_examples=4,
        storage_path=f"s3://{bucket}/ray-train",
        mlflow={"enabled": True},
        metrics=str(tmp_path / "metrics.json"),
        loss_plot=str(tmp_path / "loss.csv"),
    )
    registry = shared_config("registry", tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
                             artifact_root=str(tmp_path / "mlart"))
    engines = shared_config("engines", ray={"address": None, "num_cpus": 2})  # the ray_local fixture's Ray
    report = finetune.run(cfg, engines, registry, _worker_overrides={
        "_fail_once": {"rank": 1, "after_step": 3, "marker_dir": str(tmp_path)}})

    assert (tmp_path / "failed_once").read_text() == "3"  # the worker really died once
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ray-train/finetune/").get("Contents", [])]
    # the resumable state (weights, optimizer, step, data position) was written to S3
    assert any("checkpoint_" in k and k.endswith("train_state.pt") for k in keys), keys
    assert report["steps"] == 4
    assert report["resumed_from_step"] == 2  # the restarted group continued from the step-2 checkpoint
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "tokens_per_second", "startup_seconds"):
        assert math.isfinite(report[key]), key
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4
    with open(tmp_path / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # every step exactly once across the two attempts
    assert float(rows[0]["loss"]) == pytest.approx(report["train_loss_first"], rel=1e-5)
    assert [r["step"] for r in rows if r["eval_loss"]] == ["2", "4"]
    assert float(rows[3]["eval_loss"]) == pytest.approx(report["eval_loss"], rel=1e-5)
    assert [s for s, _ in report["eval_history"]] == [2, 4]

    out = Path(cfg.output_dir)
    meta = json.loads((out / "training_meta.json").read_text())
    assert meta["steps"] == 4 and meta["params"]["lora"]["r"] == 8 and meta["method"] == "lora"
    assert (out / "adapter_config.json").exists() and (out / "tokenizer_config.json").exists()
    assert not (out / "train_state.pt").exists()  # resume state stays in the checkpoints, not in the model
    assert not list(out.parent.glob(".candidate.tmp-*"))  # atomic: no temp dir left behind

    # MLflow: the run holds params, the per-step loss curve and the lineage tags; its id is in training_meta
    from pipelines.models.registry import client as mlflow_client

    client = mlflow_client(registry.tracking_uri)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.params["max_steps"] == "4" and run.data.params["lora.r"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    for tag in ("dataset.version", "base_model.hash", "git_commit"):
        assert run.data.tags[tag], tag

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # the adapter was trained (B starts at 0)


def test_checkpoint_file_is_read_whole_from_local_and_s3(tmp_path, s3_bucket, s3_server, monkeypatch):
    """Resume reads the train state straight from the checkpoint's filesystem; concurrent readers of one S3
    checkpoint each get the whole, identical file (Ray's shared as_directory download dir could hand one
    reader a file another was re-downloading)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray.train import Checkpoint

    from pipelines.storage.s3 import arrow_filesystem
    from pipelines.training.sft import read_checkpoint_file

    payload = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "state.pt").write_bytes(payload)
    assert read_checkpoint_file(Checkpoint.from_directory(str(tmp_path)), "state.pt").getvalue() == payload

    bucket, s3 = s3_bucket
    s3.put_object(Bucket=bucket, Key="run/ckpt_000001/state.pt", Body=payload)
    for var, key in (("AWS_ENDPOINT_URL", "endpoint_url"), ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                     ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key")):
        monkeypatch.setenv(var, s3_server[key])
    remote = Checkpoint(path=f"{bucket}/run/ckpt_000001", filesystem=arrow_filesystem())
    with ThreadPoolExecutor(4) as pool:
        reads = list(pool.map(lambda _: read_checkpoint_file(remote, "state.pt").getvalue(), range(4)))
    assert all(r == payload for r in reads)
    with pytest.raises(FileNotFoundError):
        read_checkpoint_file(remote, "missing.pt")


def test_warm_pool_processes_serve_the_train_workers(ray_local, tmp_path):
    """Workers prestarted through the raylet with `train_runtime_env()` are the processes Ray Train runs its
    workers in: if Train's runtime env (or Ray's matching of idle workers) changes, the pool silently stops
    helping, and this fails."""
    from ray.train import RunConfig, ScalingConfig

    from pipelines.engines import ray_warm_pool
    from pipelines.engines.ray_engine import ray_train_env_defaults, start_autoscaling_coordinator
    from pipelines.training.trainer import LeanTorchTrainer

    def report_pid_and_env(config):  # local: cloudpickle ships it by value (workers cannot import this module)
        import json
        import os
        from pathlib import Path

        import ray.train

        rank = ray.train.get_context().get_world_rank()
        env_vars = dict(ray.get_runtime_context().runtime_env.get("env_vars", {}))
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "env_vars": env_vars}))

    ray_train_env_defaults()
    env_vars = ray_warm_pool.train_runtime_env()["env_vars"]
    start_autoscaling_coordinator()  # as `llmops ray up` does: it must not take a pool process
    before, _ = ray_warm_pool.pool_processes(env_vars)
    assert ray_warm_pool.prestart_for_train_run(2, keep_alive_s=120) == 4  # controller, sync actor, 2 workers
    warm, _ = ray_warm_pool.pool_processes(env_vars)
    warm -= before
    assert len(warm) == 4, warm

    trainer = LeanTorchTrainer(
        report_pid_and_env,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="warm-pool-test", storage_path=str(tmp_path / "storage")),
    )
    trainer.fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["env_vars"] == env_vars for r in ranks), ranks
    pids = {r["pid"] for r in ranks}
    assert len(pids) == 2 and pids <= warm, (pids, warm)  # both workers ran in prestarted processes


def test_weight_sync_broadcasts_trainable_and_checks_frozen(ray_local, tmp_path):
    """Before DDP (which then skips its own full broadcast), the trainable weights become rank 0's and frozen
    weights that differ between ranks stop the run instead of training silently diverged replicas."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):
        import json
        from pathlib import Path

        import ray.train
        import torch

        from pipelines.training.sft import sync_weights_from_rank0

        rank = ray.train.get_context().get_world_rank()

        def model(frozen_seed: int, trainable_seed: int):
            torch.manual_seed(frozen_seed)
            frozen = torch.nn.Linear(4, 4)
            frozen.requires_grad_(False)
            torch.manual_seed(trainable_seed)
            return torch.nn.Sequential(frozen, torch.nn.Linear(4, 2))

        same_base = model(0, 100 + rank)  # same frozen layer, different trainable init per rank
        sync_weights_from_rank0(same_base, torch.device("cpu"))
        out = {"trainable": same_base[1].weight.flatten().tolist(), "frozen": same_base[0].weight.flatten().tolist()}
        try:
            sync_weights_from_rank0(model(rank, 0), torch.device("cpu"))  # frozen layer differs on rank 1
            out["mismatch_error"] = None
        except RuntimeError as exc:
            out["mismatch_error"] = str(exc)
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(out))

    TorchTrainer(
        loop,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="weight-sync-test", storage_path=str(tmp_path / "storage")),
    ).fit()
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r1["trainable"] == r0["trainable"] and r1["frozen"] == r0["frozen"]
    import torch

    torch.manual_seed(100)  # rank 0's trainable layer, model(0, 100), is what both ranks now hold
    assert r0["trainable"] == pytest.approx(torch.nn.Linear(4, 2).weight.flatten().tolist())
    for r in (r0, r1):
        assert r["mismatch_error"] and "frozen base weights differ" in r["mismatch_error"]
