"""Supervised fine-tuning pieces: chat-template formatting with prompt masking, and the Ray Train worker loop.

Everything heavy (torch, transformers, peft, pandas) is imported inside the functions: this module is imported
by the driver, which should stay light while Ray starts, and by each Train worker, which imports what it uses.
"""
from __future__ import annotations

import math
import time
from typing import Any

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and so HF causal-LM loss) skips


def format_example(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]] | None:
    """One chat turn (user=prompt, assistant=response) as input_ids + labels, prompt tokens masked with -100.

    The prompt part is the chat template with `add_generation_prompt=True`, i.e. exactly what the model sees at
    inference time; the labels cover the assistant's answer and its end-of-turn token. Returns None when
    truncation to `max_length` leaves no response token (nothing to learn from).
    """
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": response}], tokenize=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # A template whose prompt is not a token prefix of the full turn: tokenize the two parts separately.
        full_ids = prompt_ids + tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    input_ids = full_ids[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids):])[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def load_instruction_rows(path: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(prompt, response) pairs of the `instruction` rows of a split, in file order, plus counts of what was skipped."""
    import pandas as pd

    df = pd.read_parquet(path)
    total = len(df)
    if "kind" in df.columns:
        df = df[df["kind"] == "instruction"]
    df = df[df["prompt"].notna() & df["response"].notna()]
    df = df[(df["prompt"].astype(str).str.strip() != "") & (df["response"].astype(str).str.strip() != "")]
    pairs = list(zip(df["prompt"].astype(str), df["response"].astype(str)))
    return pairs, {"rows": total, "instruction_rows": len(pairs), "skipped_rows": total - len(pairs)}


def tokenize_split(tokenizer, path: str, max_length: int, limit: int | None = None) -> tuple[list[dict], dict]:
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
    return examples, counts


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-pad a batch; padding is masked out of attention and loss."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shard_batches(n_examples: int, batch_size: int, rank: int, world: int, seed: int, epoch: int) -> list[list[int]]:
    """Deterministic per-rank batches for one epoch: a seeded permutation split round-robin over ranks
    (what DistributedSampler does, without needing a Dataset). Same seed -> same batches on every run."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n_examples, generator=g).tolist()
    per_rank = order[rank::world]
    # every rank must take the same number of steps (DDP all-reduces each step): trim to the shortest rank
    n_batches = (n_examples // world) // batch_size
    return [per_rank[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: LoRA SFT for `max_steps` steps, eval loss, adapter checkpoint from rank 0."""
    t_enter = time.time()
    import tempfile

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_imported = time.time()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # One intra-op thread per CPU the worker was given: 2 workers x N threads on a 2-core box oversubscribes
    # the cores and is several times slower than 2 x 1.
    torch.set_num_threads(max(1, int(config["threads_per_worker"])))
    seed = int(config["seed"])
    seed_everything(seed)

    tokenizer = AutoTokenizer.from_pretrained(config["base_model_dir"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_examples, train_counts = tokenize_split(tokenizer, config["train_path"], config["max_length"])
    eval_examples, eval_counts = tokenize_split(
        tokenizer, config["eval_path"], config["max_length"], limit=config.get("max_eval_examples")
    )
    batch_size = int(config["per_device_batch_size"])
    if len(train_examples) < world * batch_size:
        raise ValueError(
            f"finetune: {len(train_examples)} usable training examples, need at least "
            f"num_workers*per_device_batch_size = {world * batch_size}"
        )

    model = AutoModelForCausalLM.from_pretrained(config["base_model_dir"], dtype=getattr(torch, config["dtype"]))
    lora = config["lora"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
            task_type="CAUSAL_LM",
        ),
    )
    peft_model = model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if world > 1:
        model = ray.train.torch.prepare_model(model)  # DDP (gloo on CPU); rank 0's LoRA init is broadcast
    # Dropout masks differ per rank on purpose, and are reproducible run to run.
    torch.manual_seed(seed + rank)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["learning_rate"])

    def mean_over_ranks(value: float) -> float:
        if world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / world

    max_steps = int(config["max_steps"])
    losses: list[float] = []
    tokens_local = 0
    step, epoch = 0, 0
    model.train()
    t_first_step = None
    while step < max_steps:
        for batch_idx in shard_batches(len(train_examples), batch_size, rank, world, seed, epoch):
            if step >= max_steps:
                break
            if t_first_step is None:
                t_first_step = time.time()
            batch = collate([train_examples[i] for i in batch_idx], pad_id)
            tokens_local += int(batch["attention_mask"].sum())
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = mean_over_ranks(float(loss.detach()))
            losses.append(loss_value)
            # every worker must call report (it is a barrier); the metrics kept are rank 0's
            ray.train.report({"step": step, "loss": loss_value})
        epoch += 1
    t_train_end = time.time()

    # Eval loss, token-weighted over the eval split, sharded across ranks and summed.
    model.eval()
    loss_sum, n_tok = 0.0, 0
    with torch.no_grad():
        mine = list(range(rank, len(eval_examples), world))
        for i in range(0, len(mine), batch_size):
            batch = collate([eval_examples[j] for j in mine[i:i + batch_size]], pad_id)
            logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
            shift_labels = batch["labels"][:, 1:].reshape(-1)
            loss_sum += float(torch.nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            n_tok += int((shift_labels != IGNORE_INDEX).sum())
    totals = torch.tensor([loss_sum, float(n_tok), float(tokens_local)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals)
    eval_loss = totals[0].item() / totals[1].item() if totals[1].item() > 0 else math.nan
    tokens_total = int(totals[2].item())
    train_seconds = t_train_end - (t_first_step or t_train_end)

    metrics = {
        "step": step,
        "loss": losses[-1] if losses else math.nan,
        "eval_loss": eval_loss,
        "eval_tokens": int(totals[1].item()),
        "losses": losses,
        "train_tokens": tokens_total,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens_total / train_seconds if train_seconds > 0 else math.nan,
        "trainable_params": trainable,
        "world_size": world,
        "train_counts": train_counts,
        "eval_counts": eval_counts,
        # wall-clock stamps (time.time()) so the driver can split start-up from training
        "t_worker_enter": t_enter,
        "t_worker_imported": t_imported,
        "t_first_step": t_first_step,
        "t_train_end": t_train_end,
    }
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)
