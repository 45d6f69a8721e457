"""Start-up overhead of the finetune stage: stage start -> first training step, median of N fresh processes.

Each run is a fresh Python process (so `ray.init` and every Ray/Train process start are paid, as in
`llmops run finetune` / `dvc repro`), with a tiny config (2 workers, 2 steps, batch 1) on the repo's split.
Writes bench/results/finetune_startup.json with every run's `startup_breakdown` and the medians.

    .venv/bin/python bench/bench_finetune_startup.py [--runs 3] [--label after] [--ray-address auto]
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
OUT = REPO / "bench" / "results" / "finetune_startup.json"

CHILD = r"""
import json, sys, time
t0 = time.time()
from pipelines.stages import finetune
tmp = sys.argv[1]
cfg = finetune.Config(mlflow={"enabled": False}, num_workers=2, max_steps=2, per_device_batch_size=1, max_length=128, max_eval_examples=4,
                      output_dir=f"{tmp}/candidate", metrics=f"{tmp}/metrics.json", loss_plot=f"{tmp}/loss.csv",
                      storage_path=f"{tmp}/storage")
report = finetune.run(cfg)
report["import_stage_module"] = round(report.get("t_stage_start", t0) - t0, 2)
print("BENCH_JSON " + json.dumps(report))
"""


def one_run(ray_address: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if ray_address:
            env["LLMOPS_RAY_ADDRESS"] = ray_address
        t = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, tmp], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.time() - t
        line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"bench run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        report = json.loads(line[len("BENCH_JSON "):])
        report["process_wall_seconds"] = round(wall, 2)
        return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--label", default="current")
    ap.add_argument("--ray-address", default=None,
                    help="join a long-lived Ray (e.g. 'auto' after `ray start --head`) instead of starting one per run")
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        r = one_run(args.ray_address)
        print(f"run {i + 1}: startup {r['startup_seconds']} s  {r['startup_breakdown']}", flush=True)
        runs.append(r)
    keys = list(runs[0]["startup_breakdown"])
    result = {
        "label": args.label,
        "ray_address": args.ray_address,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "runs": [{"startup_seconds": r["startup_seconds"], "seconds": r["seconds"],
                  "process_wall_seconds": r["process_wall_seconds"], "breakdown": r["startup_breakdown"]}
                 for r in runs],
        "median_startup_seconds": statistics.median(r["startup_seconds"] for r in runs),
        "median_breakdown": {k: statistics.median(r["startup_breakdown"][k] for r in runs) for k in keys},
        "target_seconds": 15,
    }
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    history = previous.get("history", [])
    if previous.get("label"):
        history.append({k: previous[k] for k in ("label", "ray_address", "median_startup_seconds", "median_breakdown",
                                                 "machine") if k in previous})
    result["history"] = history
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_startup_seconds", "median_breakdown")}, indent=2))


if __name__ == "__main__":
    main()
