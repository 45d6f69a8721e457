"""Supervised fine-tuning pieces: chat-template formatting with prompt masking, and the Ray Train worker loop.

Everything heavy (torch, transformers, peft, pandas) is imported inside the functions: this module is imported
by the driver, which should stay light while Ray starts, and by each Train worker, which imports what it uses.
"""
from __future__ import annotations

import io
import math
import time
from typing import Any, NamedTuple

# chat formatting with prompt masking and right-padded batches: pipelines/training/formatting.py (shared with
# the DPO objective, pipelines/training/dpo.py); re-exported here
from pipelines.training.formatting import IGNORE_INDEX, collate, format_example  # noqa: F401


class InstructionPairs(NamedTuple):
    pairs: list[tuple[str, str]]  # (prompt, response), in file order
    counts: dict[str, int]  # rows, instruction_rows, skipped_rows


def load_instruction_rows(path: str) -> InstructionPairs:
    """(prompt, response) pairs of the `instruction` rows of a split, in file order, plus counts of what was skipped."""
    import pandas as pd

    df = pd.read_parquet(path)
    total = len(df)
    if "kind" in df.columns:
        df = df[df["kind"] == "instruction"]
    df = df[df["prompt"].notna() & df["response"].notna()]
    df = df[(df["prompt"].astype(str).str.strip() != "") & (df["response"].astype(str).str.strip() != "")]
    pairs = list(zip(df["prompt"].astype(str), df["response"].astype(str)))
    return InstructionPairs(pairs, {"rows": total, "instruction_rows": len(pairs), "skipped_rows": total - len(pairs)})


class TokenizedSplit(NamedTuple):
    examples: list[dict[str, list[int]]]  # input_ids + labels (format_example)
    counts: dict[str, int]  # load_instruction_rows' counts + examples, dropped_no_response_after_truncation


def tokenize_split(tokenizer, path: str, max_length: int, limit: int | None = None) -> TokenizedSplit:
    pairs, counts = load_instruction_rows(path)
    if limit is not None:
        pairs = pairs[:limit]
    examples, too_long = [], 0
    for prompt, response in pairs:
        ex = format_example(tokenizer, prompt, response, max_length)
        if ex is None:
            too_long += 1
        else:
            examples.append(ex)
    counts.update({"examples": len(examples), "dropped_no_response_after_truncation": too_long})
    return TokenizedSplit(examples, counts)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shard_batches(n_examples: int, batch_size: int, rank: int, world: int, seed: int, epoch: int,
                  lengths: list[int] | None = None, bucket_window: int = 8) -> list[list[int]]:
    """Deterministic per-rank batches for one epoch: a seeded permutation split round-robin over ranks
    (what DistributedSampler does, without needing a Dataset). Same seed -> same batches on every run.

    With `lengths` (length bucketing): inside windows of `bucket_window` batches of a rank's shuffled rows, rows
    are sorted by length before being cut into batches, and the batches are then shuffled (seeded): batches hold
    similar lengths, so less compute goes to padding, while the epoch still sees every row once in a random order.
    """
    import torch

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n_examples, generator=g).tolist()
    per_rank = order[rank::world]
    # every rank must take the same number of steps (DDP all-reduces each step): trim to the shortest rank
    n_batches = (n_examples // world) // batch_size
    per_rank = per_rank[:n_batches * batch_size]
    if lengths is not None:
        w = max(1, bucket_window) * batch_size
        per_rank = [i for k in range(0, len(per_rank), w)
                    for i in sorted(per_rank[k:k + w], key=lambda j: (lengths[j], j))]
    batches = [per_rank[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    if lengths is not None:
        g2 = torch.Generator()
        g2.manual_seed(seed + epoch + 7919 * (rank + 1))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g2).tolist()]
    return batches


def global_batches(n_examples: int, batch_size: int, world: int, seed: int, steps: int):
    """(step, row indices) of the first `steps` steps of a `world`-rank run, every rank's batch of a step joined:
    what one process trains on to see the same data as the DDP run, epoch after epoch (the benchmarks' baselines)."""
    step, epoch = 0, 0
    while step < steps:
        per_rank = [shard_batches(n_examples, batch_size, r, world, seed, epoch) for r in range(world)]
        if not per_rank[0]:
            raise ValueError(f"{n_examples} examples make no batch of {batch_size} per rank on {world} rank(s)")
        for i in range(len(per_rank[0])):
            if step >= steps:
                return
            yield step, [j for r in range(world) for j in per_rank[r][i]]
            step += 1
        epoch += 1


TRAIN_STATE = "train_state.pt"  # inside every checkpoint: trainable weights, optimizer, step, data position, history


def _maybe_inject_failure(config: dict, rank: int, step: int) -> None:
    """Test-only fault injection: `_fail_once = {"rank", "after_step", "marker_dir"}` (never set from params.yaml)
    kills this worker process once, the first time it gets there (a marker file records that it happened)."""
    spec = config.get("_fail_once")
    if not spec or rank != spec["rank"] or step != spec["after_step"]:
        return
    import os
    from pathlib import Path

    marker = Path(spec["marker_dir"]) / "failed_once"
    if not marker.exists():
        marker.write_text(str(step))
        os._exit(1)


class EvalLoss(NamedTuple):
    loss: float  # token-weighted mean over all ranks (nan without tokens)
    tokens: int


def eval_loss_over_ranks(model, examples, batch_size, pad_id, rank, world) -> EvalLoss:
    """Token-weighted loss over `examples`, sharded across ranks and summed (a collective: every rank calls it)."""
    import torch
    import torch.distributed as dist

    was_training = model.training
    model.eval()
    loss_sum, n_tok = 0.0, 0
    with torch.no_grad():
        mine = list(range(rank, len(examples), world))
        for i in range(0, len(mine), batch_size):
            batch = collate([examples[j] for j in mine[i:i + batch_size]], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
            shift_labels = batch["labels"][:, 1:].reshape(-1)
            loss_sum += float(torch.nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            n_tok += int((shift_labels != IGNORE_INDEX).sum())
    totals = torch.tensor([loss_sum, float(n_tok)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals)
    if was_training:
        model.train()
    return EvalLoss(totals[0].item() / totals[1].item() if totals[1].item() > 0 else math.nan, int(totals[1].item()))


def build_model(config: dict):
    """Base model from `base_model_dir`, wrapped in a LoRA adapter (`method: lora`) or fully trainable (`full`).
    With `init_adapter_dir` (DPO from the champion) the LoRA adapter is that one, trainable (its own r/alpha)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config["base_model_dir"], dtype=getattr(torch, config["dtype"]))
    if config["method"] == "full":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.get("init_adapter_dir"):
        return PeftModel.from_pretrained(model, config["init_adapter_dir"], is_trainable=True)

    lora = config["lora"]
    return get_peft_model(
        model,
        LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
            task_type="CAUSAL_LM",
        ),
    )


def sync_weights_from_rank0(model, device) -> None:
    """Make every rank's weights rank 0's, moving only what can differ: the trainable weights are broadcast
    (LoRA: a few hundred thousand values; a full fine-tune: all of them), the frozen ones, loaded by every rank
    from the same base model, are compared by a per-tensor checksum and must match, or this raises. Checksums are
    taken where the model is now (CPU after loading, so they are exact and deterministic); the model then moves
    to `device`, where the collectives run (gloo on CPU, NCCL on GPUs)."""
    import torch
    import torch.distributed as dist

    params = list(model.parameters())
    frozen = [p for p in params if not p.requires_grad]
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in frozen]) if frozen else None
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if trainable:
            flat = torch.nn.utils.parameters_to_vector(trainable)
            dist.broadcast(flat, src=0)
            torch.nn.utils.vector_to_parameters(flat, trainable)
        if sums is not None:
            low, high = sums.to(device).clone(), sums.to(device).clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            if not torch.equal(low, high):
                bad = int((low != high).nonzero()[0])
                raise RuntimeError(
                    f"finetune: the frozen base weights differ between workers (tensor {bad} of {len(frozen)}); "
                    "every worker must load the same base_model_dir"
                )


def read_checkpoint_file(checkpoint, name: str) -> io.BytesIO:
    """One file of a Ray checkpoint, read straight from its filesystem (local or S3) into memory.

    Not `checkpoint.as_directory()`: for a remote checkpoint, ranks on one node share its download directory,
    and a rank that arrives after another finished downloading downloads again into it, overwriting files the
    first rank is reading (seen in CI as "PytorchStreamReader failed reading file"). Reading the one file we
    need has no shared state.
    """
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{name}") as stream:
        return io.BytesIO(stream.read())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: SFT for `max_steps` optimizer steps with a held-out loss every `eval_every`
    steps and a checkpoint every `checkpoint_every` steps; resumes from `ray.train.get_checkpoint()` when Ray
    restarts the worker group after a failure (weights, optimizer, step, data position, loss history)."""
    t_enter = time.time()
    import os
    import sys

    # whether Train's imports were done before the loop (a raylet with RAY_preload_python_modules, `llmops ray up`)
    preloaded = "peft" in sys.modules and "torch" in sys.modules
    import tempfile

    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    t_imported = time.time()
    objective = config.get("objective", "sft")
    dpo_cfg = config.get("dpo") or {}
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # One intra-op thread per CPU the worker was given: 2 workers x N threads on a 2-core box oversubscribes
    # the cores and is several times slower than 2 x 1.
    torch.set_num_threads(max(1, int(config["threads_per_worker"])))
    seed = int(config["seed"])
    seed_everything(seed)

    tokenizer = AutoTokenizer.from_pretrained(config["base_model_dir"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if objective == "dpo":  # preference rows: (chosen, rejected) pairs, pipelines/training/dpo.py
        from pipelines.training import dpo

        train_examples, train_counts = dpo.tokenize_pairs(tokenizer, config["train_path"], config["max_length"])
        eval_examples, eval_counts = dpo.tokenize_pairs(
            tokenizer, config["eval_path"], config["max_length"], limit=config["max_eval_examples"])
    else:
        train_examples, train_counts = tokenize_split(tokenizer, config["train_path"], config["max_length"])
        for prompt, response in config.get("canary_examples", []):  # planted canaries (finetune.canaries)
            ex = format_example(tokenizer, prompt, response, config["max_length"])
            if ex is not None:
                train_examples.append(ex)
        eval_examples, eval_counts = tokenize_split(
            tokenizer, config["eval_path"], config["max_length"], limit=config["max_eval_examples"]
        )
    batch_size = int(config["per_device_batch_size"])
    if len(train_examples) < world * batch_size:
        raise ValueError(
            f"finetune: {len(train_examples)} usable training examples, need at least "
            f"num_workers*per_device_batch_size = {world * batch_size}"
        )
    if not config["length_bucketing"]:
        lengths = None
    elif objective == "dpo":
        lengths = [dpo.pair_length(e) for e in train_examples]
    else:
        lengths = [len(e["input_ids"]) for e in train_examples]

    t_data = time.time()
    model = build_model(config)
    if objective == "dpo":
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(model)  # as TRL's DPOConfig(disable_dropout=True): policy and reference agree
    base_model = model
    trainable_named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable = sum(p.numel() for _, p in trainable_named)
    optimizer = torch.optim.AdamW([p for _, p in trainable_named], lr=config["learning_rate"])

    # Resume: every rank loads the same state (DDP keeps weights and optimizer identical across ranks).
    step, epoch, pos = 0, 0, 0
    losses: list[float] = []
    eval_history: list[list[float]] = []  # [step, eval_loss]
    reward_accuracies: list[float] = []  # DPO: per step, mean over ranks
    reward_margins: list[float] = []
    ref_train = ref_eval = None  # DPO: [n, 2] reference log-probs (chosen, rejected)
    resumed_from = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        state = torch.load(read_checkpoint_file(ckpt, TRAIN_STATE), map_location="cpu", weights_only=False)
        with torch.no_grad():
            for n, p in trainable_named:
                p.copy_(state["trainable"][n])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, pos = state["step"], state["epoch"], state["pos"]
        losses, eval_history = list(state["losses"]), [list(e) for e in state["eval_history"]]
        if objective == "dpo":  # the reference is the model as it started, not as the checkpoint left it
            ref_train, ref_eval = state["ref_train"], state["ref_eval"]
            reward_accuracies, reward_margins = list(state["reward_accuracies"]), list(state["reward_margins"])
        resumed_from = step

    t_model = time.time()
    if world > 1:
        import ray.train.torch

        sync_weights_from_rank0(model, ray.train.torch.get_device())
        # DDP (gloo on CPU) without its own initial sync, which broadcasts every weight (540 MB here, 2-3 s over
        # gloo on the 2-core box) although only the trainable ones can differ: done above, checked for the rest.
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"init_sync": False})
    t_ddp = time.time()
    beta = float(dpo_cfg.get("beta", 0.1))
    if objective == "dpo" and ref_train is None:
        # once per run, before the first step: the starting model is the reference (or its base, with
        # dpo.reference: base); no second model in memory
        use_base = dpo_cfg.get("reference") == "base" and config["method"] == "lora"
        ref_train = dpo.reference_logps(base_model, train_examples, batch_size, pad_id, rank, world, use_base)
        ref_eval = dpo.reference_logps(base_model, eval_examples, batch_size, pad_id, rank, world, use_base)
    t_ref = time.time()

    def held_out_loss() -> float:
        if objective == "dpo":
            return dpo.dpo_eval_over_ranks(model, eval_examples, ref_eval, batch_size, pad_id, rank, world, beta).loss
        return eval_loss_over_ranks(model, eval_examples, batch_size, pad_id, rank, world).loss

    def mean_over_ranks(value: float) -> float:
        if world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / world

    def save_checkpoint(metrics: dict, final: bool) -> None:
        """Every rank calls this (report is a barrier); rank 0 writes the files."""
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            base_model.save_pretrained(tmp)  # adapter (LoRA) or the whole model (full)
            tokenizer.save_pretrained(tmp)
            if not final:
                torch.save({
                    "trainable": {n: p.detach().clone() for n, p in trainable_named},
                    "optimizer": optimizer.state_dict(),
                    "step": step, "epoch": epoch, "pos": pos,
                    "losses": losses, "eval_history": eval_history,
                    "ref_train": ref_train, "ref_eval": ref_eval,
                    "reward_accuracies": reward_accuracies, "reward_margins": reward_margins,
                }, os.path.join(tmp, TRAIN_STATE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    max_steps = int(config["max_steps"])
    eval_every = int(config["eval_every"])
    checkpoint_every = int(config["checkpoint_every"])
    tokens_local = 0
    steps_this_attempt = 0
    model.train()
    t_first_step = None
    while step < max_steps:
        batches = shard_batches(len(train_examples), batch_size, rank, world, seed, epoch, lengths=lengths)
        while pos < len(batches) and step < max_steps:
            if t_first_step is None:
                t_first_step = time.time()
            # Dropout masks: a function of (seed, rank, step) only, so a resumed run draws what the original would.
            torch.manual_seed(seed + 1000 * step + rank)
            if objective == "dpo":
                idx = batches[pos]
                chosen, rejected, n_tok = dpo.pair_logps(model, [train_examples[i] for i in idx], pad_id)
                tokens_local += n_tok
                loss, r_chosen, r_rejected = dpo.dpo_sigmoid_loss(
                    chosen, rejected, ref_train[idx, 0].to(chosen), ref_train[idx, 1].to(chosen), beta)
                reward_accuracies.append(mean_over_ranks(float((r_chosen > r_rejected).float().mean())))
                reward_margins.append(mean_over_ranks(float((r_chosen - r_rejected).mean())))
            else:
                batch = collate([train_examples[i] for i in batches[pos]], pad_id)
                tokens_local += int(batch["attention_mask"].sum())
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pos += 1
            steps_this_attempt += 1
            losses.append(mean_over_ranks(float(loss.detach())))
            if eval_every and step % eval_every == 0 and step < max_steps:
                eval_history.append([step, held_out_loss()])
            if checkpoint_every and step % checkpoint_every == 0 and step < max_steps:
                save_checkpoint({"step": step, "loss": losses[-1]}, final=False)
            _maybe_inject_failure(config, rank, step)
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
    t_train_end = time.time()

    dpo_metrics = None
    if objective == "dpo":
        held = dpo.dpo_eval_over_ranks(model, eval_examples, ref_eval, batch_size, pad_id, rank, world, beta)
        eval_loss, eval_tokens = held.loss, 0
        dpo_metrics = {"beta": beta, "reward_accuracies": reward_accuracies, "reward_margins": reward_margins,
                       "eval_reward_accuracy": held.reward_accuracy, "eval_reward_margin": held.reward_margin,
                       "eval_pairs": held.pairs, "reference_seconds": t_ref - t_ddp}
    else:
        eval_loss, eval_tokens = eval_loss_over_ranks(model, eval_examples, batch_size, pad_id, rank, world)
    if not eval_history or eval_history[-1][0] != step:
        eval_history.append([step, eval_loss])
    totals = torch.tensor([float(tokens_local)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals)
    tokens_total = int(totals[0].item())
    train_seconds = t_train_end - (t_first_step or t_train_end)

    metrics = {
        "step": step,
        "loss": losses[-1] if losses else math.nan,
        "eval_loss": eval_loss,
        "eval_tokens": eval_tokens,
        "losses": losses,
        "eval_history": eval_history,
        "resumed_from_step": resumed_from,
        "steps_this_attempt": steps_this_attempt,
        "train_tokens": tokens_total,  # this attempt's steps
        "train_seconds": train_seconds,
        "tokens_per_second": tokens_total / train_seconds if train_seconds > 0 else math.nan,
        "trainable_params": trainable,
        "world_size": world,
        "objective": objective,
        "dpo": dpo_metrics,
        "train_counts": train_counts,
        "eval_counts": eval_counts,
        # wall-clock stamps (time.time()) so the driver can split start-up from training
        "t_worker_enter": t_enter,
        "worker_preloaded": preloaded,
        "t_worker_imported": t_imported,
        "t_data_ready": t_data,
        "t_model_built": t_model,
        "t_ddp_ready": t_ddp,
        "t_first_step": t_first_step,
        "t_train_end": t_train_end,
    }
    save_checkpoint(metrics, final=True)
