"""Training throughput: the Ray finetune stage's steps vs a plain single-process PyTorch loop, side by side.

Same base model, LoRA settings, data, global batch (num_workers x per_device_batch_size, the same examples per
step), max_length and total thread count (Ray: 2 workers x 1 thread; plain: 1 process x 2 threads). Tokens/s
counts non-padding tokens over the training steps only (start-up excluded on both sides). Medians over --runs.
Writes bench/results/finetune_throughput.json.

    .venv/bin/python bench/bench_finetune_throughput.py [--runs 3] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "finetune_throughput.json"
sys.path.insert(0, str(REPO))

RAY_CHILD = r"""
import json, sys
from pipelines.stages import finetune
from pipelines.stages.registry import shared_config, stage_config
tmp, steps = sys.argv[1], int(sys.argv[2])
# no held-out loss or checkpoint inside the loop: the plain loop below has neither (params.yaml has both)
cfg = stage_config("finetune", mlflow={"enabled": False}, num_workers=2, cpus_per_worker=1, max_steps=steps,
                   eval_every=0, checkpoint_every=0, output_dir=f"{tmp}/candidate", metrics=f"{tmp}/metrics.json",
                   loss_plot=f"{tmp}/loss.csv", storage_path=f"{tmp}/storage")
report = finetune.run(cfg, shared_config("engines"), shared_config("registry"))
print("BENCH_JSON " + json.dumps({"tokens_per_second": report["tokens_per_second"],
                                  "train_seconds": report["startup_breakdown"]["train"]}))
"""


def ray_run(steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run([sys.executable, "-c", RAY_CHILD, tmp, str(steps)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"ray run failed:\n{proc.stderr[-4000:]}")
        return json.loads(line[len("BENCH_JSON "):])


def plain_run(steps: int, threads: int | None = None) -> dict:
    """Single process, 2 threads (or `threads`), the same per-step examples as the 2 Ray workers together."""
    import torch

    from pipelines.stages import finetune
    from pipelines.stages.registry import stage_config
    from pipelines.training.sft import build_model, collate, global_batches, seed_everything, tokenize_split
    from transformers import AutoTokenizer

    cfg = stage_config("finetune")
    wc = finetune.worker_config(cfg)
    world, bs, seed = cfg.num_workers, cfg.per_device_batch_size, cfg.seed
    torch.set_num_threads(threads or world * cfg.cpus_per_worker)
    seed_everything(seed)
    tok = AutoTokenizer.from_pretrained(wc["base_model_dir"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples, _ = tokenize_split(tok, wc["train_path"], cfg.max_length)
    model = build_model(wc)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    model.train()
    tokens = 0
    t0 = time.time()
    for step, idx in global_batches(len(examples), bs, world, seed, steps):
        torch.manual_seed(seed + 1000 * step)
        batch = collate([examples[j] for j in idx], pad_id)
        tokens += int(batch["attention_mask"].sum())
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    secs = time.time() - t0
    return {"tokens_per_second": tokens / secs, "train_seconds": secs}


LOAD_AT_START = os.getloadavg()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray_runs, plain_runs, plain1_runs = [], [], []
    for i in range(args.runs):  # interleaved so both see the same machine load
        ray_runs.append(ray_run(args.steps))
        plain_runs.append(plain_run(args.steps))
        # One thread: shows whether 2-thread intra-op parallelism (not Ray) is what differs on 2 shared vCPUs.
        plain1_runs.append(plain_run(args.steps, threads=1))
        print(f"run {i + 1}: ray {ray_runs[-1]['tokens_per_second']:.1f} tok/s, "
              f"plain {plain_runs[-1]['tokens_per_second']:.1f} tok/s, "
              f"plain 1 thread {plain1_runs[-1]['tokens_per_second']:.1f} tok/s", flush=True)
    ray_med = statistics.median(r["tokens_per_second"] for r in ray_runs)
    plain_med = statistics.median(r["tokens_per_second"] for r in plain_runs)
    from pipelines.stages.registry import stage_config

    cfg = stage_config("finetune")
    result = {
        "setup": {"steps": args.steps, "num_workers": cfg.num_workers, "threads_total": cfg.num_workers * cfg.cpus_per_worker,
                  "per_device_batch_size": cfg.per_device_batch_size, "max_length": cfg.max_length,
                  "lora": cfg.lora.model_dump(), "cpus": os.cpu_count()},
        "ray_tokens_per_second": ray_runs, "plain_tokens_per_second": plain_runs,
        "plain_1thread_tokens_per_second": plain1_runs,
        "plain_1thread_median": round(statistics.median(r["tokens_per_second"] for r in plain1_runs), 1),
        "load_avg_at_start": LOAD_AT_START,
        "ray_median": round(ray_med, 1), "plain_median": round(plain_med, 1),
        "ratio": round(ray_med / plain_med, 3), "target_ratio": 0.95,
        "load_avg_at_end": os.getloadavg(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ray_median", "plain_median", "ratio")}))


if __name__ == "__main__":
    main()
