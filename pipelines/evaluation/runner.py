"""Running the task families on Ray Data: a pool of model-holding actors, both models in each actor.

Work is cut on the driver into blocks of at most `batch_size` records of ONE task (fixed composition: the same
records are padded together whatever actor runs them, so 1 or N actors give the same greedy outputs). Each actor
(`ModelEvaluator`) loads the base model once with the candidate's LoRA adapter and, when there is one, the
champion's adapter next to it (peft named adapters: one copy of the base weights); the reference is the champion
adapter, or the base with adapters disabled. Every block is run by both models in the same actor, one after the
other. `run_local` calls the same class in this process (the single-process baseline of bench/bench_evaluate.py).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from pipelines.config import absolute_path
from pipelines.engines.config import RayConfig
from pipelines.evaluation.tasks import FAMILIES, TaskSpec

CANDIDATE, REFERENCE = "candidate", "reference"


class _OnDevice:
    """`lm.generate` builds its batches on the CPU: move them to the model's device and the result back."""

    def __init__(self, model, device):
        self.model, self.device = model, device

    def generate(self, *, input_ids, attention_mask, **kwargs):
        return self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                   **kwargs).cpu()


class ModelContext:
    """What a family's `infer` may ask of the model that is active now."""

    def __init__(self, model, tokenizer, *, batch_size: int, max_prompt_tokens: int, max_length: int, on_gpu: bool):
        self.model, self.tok = model, tokenizer
        self.batch_size, self.max_prompt_tokens, self.max_length = batch_size, max_prompt_tokens, max_length
        self.on_gpu = on_gpu

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
        from pipelines.models import lm

        ids = [lm.truncate_middle(lm.chat_prompt_ids(self.tok, p), self.max_prompt_tokens) for p in prompts]
        model = _OnDevice(self.model, "cuda") if self.on_gpu else self.model
        return lm.generate(model, self.tok, ids, max_new_tokens=max_new_tokens, batch_size=self.batch_size)

    def response_nll(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[float, int]]:
        """(summed NLL in nats, scored tokens) of each response after its chat-formatted prompt."""
        import torch

        from pipelines.models import lm

        examples = [lm.build_sft_example(self.tok, p, r, self.max_length) for p, r in zip(prompts, responses)]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
        device = next(self.model.parameters()).device
        for start in range(0, len(examples), self.batch_size):
            rows = examples[start:start + self.batch_size]
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for j, (ids, n_prompt) in enumerate(rows):  # right padding: positions unchanged
                t = torch.tensor(ids, dtype=torch.long)
                input_ids[j, :len(ids)], attention[j, :len(ids)] = t, 1
                labels[j, n_prompt:len(ids)] = t[n_prompt:]
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            shift_labels = labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1, :].float().transpose(1, 2), shift_labels,
                                                     ignore_index=-100, reduction="none")
            sums, counts = loss.sum(dim=1).tolist(), (shift_labels != -100).sum(dim=1).tolist()
            for j in range(len(rows)):
                out[start + j] = (float(sums[j]), int(counts[j]))
        return out


def _node_id() -> str:
    """The Ray node this actor runs on ("local" outside Ray): how many nodes took part goes into the metrics."""
    ray = sys.modules.get("ray")  # never imported just to ask: the single-process path runs without Ray
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else "local"


class ModelEvaluator:
    """Ray Data callable class: one model load per actor, every block run by the reference and the candidate."""

    def __init__(self, base_model_dir: str, candidate_dir: str, champion_dir: str | None, specs: list[dict],
                 threads: int, batch_size: int, max_prompt_tokens: int, max_length: int, use_gpu: bool):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from pipelines.models.lm import load_tokenizer

        t0 = time.perf_counter()
        torch.set_num_threads(max(1, threads))
        hf_logging.disable_progress_bar()
        if not (Path(candidate_dir) / "adapter_config.json").exists():
            raise FileNotFoundError(f"evaluate: the candidate is no LoRA adapter directory: {candidate_dir}")
        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, candidate_dir, adapter_name=CANDIDATE)
        if champion_dir:
            model.load_adapter(champion_dir, adapter_name="champion")
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("evaluate: ray.use_gpu is set but this actor sees no CUDA device")
        self.on_gpu = bool(use_gpu)
        if self.on_gpu:
            model = model.to("cuda")
        model.eval()
        self.model, self.has_champion = model, bool(champion_dir)
        self.tok = load_tokenizer(base_model_dir)
        self.ctx = ModelContext(model, self.tok, batch_size=batch_size, max_prompt_tokens=max_prompt_tokens,
                                max_length=max_length, on_gpu=self.on_gpu)
        self.specs = {s["name"]: TaskSpec(**s) for s in specs}
        self.load_seconds = time.perf_counter() - t0

    def _run(self, variant: str, spec: TaskSpec, records: list[dict]) -> list[dict]:
        family = FAMILIES[spec.type]
        if variant == CANDIDATE:
            self.model.set_adapter(CANDIDATE)
            return family.infer(self.ctx, records, spec)
        if self.has_champion:
            self.model.set_adapter("champion")
            return family.infer(self.ctx, records, spec)
        with self.model.disable_adapter():
            return family.infer(self.ctx, records, spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.time()
        tasks = {str(t) for t in batch["task"]}
        if len(tasks) != 1:
            raise ValueError(f"evaluate: a block mixes tasks {sorted(tasks)}")
        spec = self.specs[tasks.pop()]
        records = [json.loads(str(p)) for p in batch["record"]]
        outputs: dict[str, list[dict]] = {}
        seconds: dict[str, float] = {}
        for variant in (REFERENCE, CANDIDATE):
            t0 = time.perf_counter()
            outputs[variant] = self._run(variant, spec, records)
            seconds[variant] = time.perf_counter() - t0
        n = len(records)
        return {
            "task": batch["task"], "id": batch["id"],
            "output": np.asarray([json.dumps({v: outputs[v][i] for v in outputs}) for i in range(n)], dtype=object),
            "_seconds": np.full(n, json.dumps(seconds), dtype=object),
            "_t_start": np.full(n, started), "_t_end": np.full(n, time.time()),
            "_load_seconds": np.full(n, self.load_seconds),
            "_node": np.full(n, _node_id(), dtype=object),
        }


class Block(NamedTuple):
    task: str
    ids: list[str]
    records: list[str]  # JSON
    cost: float = 0.0   # Family.estimated_cost: the pool takes blocks costliest first


def make_blocks(examples: dict[str, list[dict]], batch_size: int,
                specs: Sequence[TaskSpec] | None = None) -> list[Block]:
    """Task-homogeneous blocks of at most `batch_size` records, the costliest first when `specs` are given.

    The pool hands each block to whichever actor is free (see run_ray), so longest-first is greedy LPT
    scheduling: block costs differ up to ~5x between families, and a costly block that starts last leaves the other
    actors idle while it runs. Costs are `Family.estimated_cost` (prompt tokens and decode steps); ties keep task
    order, so the order, like the blocks themselves, is the same on every run."""
    by_name = {s.name: s for s in specs or ()}
    blocks: list[Block] = []
    for task, records in examples.items():
        for i in range(0, len(records), batch_size):
            chunk = records[i:i + batch_size]
            spec = by_name.get(task)
            cost = FAMILIES[spec.type].estimated_cost(chunk, spec, batch_size) if spec else 0.0
            blocks.append(Block(task, [r["id"] for r in chunk], [json.dumps(r) for r in chunk], cost))
    return sorted(blocks, key=lambda b: -b.cost)  # stable: ties keep task order


class RunResult(NamedTuple):
    outputs: dict[str, dict[str, dict[str, dict]]]  # task -> id -> variant -> output
    ray_init_seconds: float
    pipeline_seconds: float  # Ray Data pipeline, actor start and model load included
    steady_seconds: float  # first block start -> last block end, in the actors
    model_load_seconds: float  # the slowest actor's model load
    variant_seconds: dict[str, float]  # summed inference seconds per model
    task_seconds: dict[str, float]  # summed inference seconds per task (both models)
    nodes: int = 1  # distinct Ray nodes whose actors ran blocks


def _collect(rows: list[dict]) -> RunResult:
    outputs: dict[str, dict[str, dict]] = {}
    first, last, load = float("inf"), 0.0, 0.0
    per_variant: dict[str, float] = {REFERENCE: 0.0, CANDIDATE: 0.0}
    per_task: dict[str, float] = {}
    seen_blocks: set[tuple[float, float]] = set()
    for r in rows:
        outputs.setdefault(str(r["task"]), {})[str(r["id"])] = json.loads(str(r["output"]))
        first, last = min(first, float(r["_t_start"])), max(last, float(r["_t_end"]))
        load = max(load, float(r["_load_seconds"]))
        key = (float(r["_t_start"]), float(r["_t_end"]))
        if key not in seen_blocks:
            seen_blocks.add(key)
            for v, s in json.loads(str(r["_seconds"])).items():
                per_variant[v] += s
                per_task[str(r["task"])] = per_task.get(str(r["task"]), 0.0) + s
    return RunResult(outputs, 0.0, 0.0, max(0.0, last - first), load, {k: round(v, 3) for k, v in per_variant.items()},
                     {k: round(v, 2) for k, v in per_task.items()}, len({str(r.get("_node", "local")) for r in rows}) or 1)


def evaluator_kwargs(*, base_model_dir: str, candidate_dir: str, champion_dir: str | None,
                     specs: Sequence[TaskSpec], threads: int, batch_size: int, max_prompt_tokens: int,
                     max_length: int, use_gpu: bool) -> dict:
    # absolute: the actors may run on a Ray this process joined, in another working directory
    return {"base_model_dir": absolute_path(str(base_model_dir)), "candidate_dir": absolute_path(str(candidate_dir)),
            "champion_dir": absolute_path(str(champion_dir)) if champion_dir else None, "specs": [s.model_dump() for s in specs],
            "threads": threads, "batch_size": batch_size, "max_prompt_tokens": max_prompt_tokens,
            "max_length": max_length, "use_gpu": use_gpu}


def run_ray(ray_config: RayConfig, blocks: list[Block], kwargs: dict, *, actors: int, threads: int,
            use_gpu: bool) -> RunResult:
    """The blocks through Ray Data `map_batches` over a fixed pool of `actors` ModelEvaluator actors, each
    reserving `threads` CPUs (and one GPU with use_gpu)."""
    import pyarrow as pa

    from pipelines.engines.ray_engine import init_ray

    t0 = time.perf_counter()
    ray = init_ray(ray_config)
    init_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    tables = [pa.table({"task": pa.array([b.task] * len(b.ids), pa.string()), "id": pa.array(b.ids, pa.string()),
                        "record": pa.array(b.records, pa.string())}) for b in blocks]
    ds = ray.data.from_arrow(tables).map_batches(
        ModelEvaluator,
        fn_constructor_kwargs=kwargs,
        batch_size=None,  # one block = one batch: fixed padding groups whatever the pool size
        batch_format="numpy",
        # One block in flight per actor: a free actor takes the next block. Ray's default queues several per
        # actor up front, which pins blocks whose cost differs up to ~5x between tasks
        # to actors round-robin and leaves one idle at the tail (per-actor efficiency 0.87 measured that way).
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_cpus=threads,
        num_gpus=1 if use_gpu else 0,
    )
    rows: list[dict] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n = len(batch["id"])
        rows.extend({k: batch[k][i] for k in batch} for i in range(n))
    result = _collect(rows)
    return result._replace(ray_init_seconds=init_seconds, pipeline_seconds=time.perf_counter() - t0)


def run_local(blocks: list[Block], kwargs: dict) -> RunResult:
    """The same evaluator in this process, block after block (no Ray)."""
    t0 = time.perf_counter()
    evaluator = ModelEvaluator(**kwargs)
    rows: list[dict] = []
    for b in blocks:
        out = evaluator({"task": np.asarray([b.task] * len(b.ids), dtype=object),
                         "id": np.asarray(b.ids, dtype=object), "record": np.asarray(b.records, dtype=object)})
        rows.extend({k: out[k][i] for k in out} for i in range(len(b.ids)))
    result = _collect(rows)
    return result._replace(pipeline_seconds=time.perf_counter() - t0)
