"""Start-up overhead of the finetune stage: stage start -> first training step, on a Ray started per run and on a
long-lived head with and without Ray's warm worker pool (pipelines/engines/ray_warm_pool.py), side by side.

Each run is a fresh Python process (as `llmops run finetune` / `dvc repro`) with a tiny config (2 workers, 2 steps,
batch 1) on the repo's split. Settings:
- local: the stage starts its own Ray (`ray.init`; the stage uses no pool there, see ray_warm_pool).
- head-cold / head-warm: `llmops ray up [--no-warm-pool]` starts a head, then `--runs` runs join it
  (LLMOPS_RAY_ADDRESS=auto) `--settle` seconds apart (what a person re-running a stage leaves between runs; it
  lets the pool refilled by the previous run finish its imports); then `llmops ray down`.
Writes bench/results/finetune_startup.json (every run's `startup_breakdown`, medians, and ratios to cold).

    .venv/bin/python bench/bench_finetune_startup.py [--runs 3] [--settings local head-cold head-warm]
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
BIN = Path(sys.executable).parent
SETTINGS = ("local", "head-cold", "head-warm")

CHILD = r"""
import json, sys, time
from pipelines.stages import finetune
from pipelines.stages.registry import shared_config, stage_config
tmp, warm = sys.argv[1], sys.argv[2] == "warm"
cfg = stage_config("finetune", mlflow={"enabled": False}, num_workers=2, max_steps=2, per_device_batch_size=1,
                   max_length=128, max_eval_examples=4, output_dir=f"{tmp}/candidate", metrics=f"{tmp}/metrics.json",
                   loss_plot=f"{tmp}/loss.csv", storage_path=f"{tmp}/storage")
report = finetune.run(cfg, shared_config("engines", ray={"warm_pool": warm}), shared_config("registry"))
print("BENCH_JSON " + json.dumps(report))
"""


def _env(head: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("LLMOPS_RAY_ADDRESS", None)
    if head:
        env["LLMOPS_RAY_ADDRESS"] = "auto"
    return env


def one_run(head: bool, warm: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        t = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, tmp, "warm" if warm else "cold"], cwd=REPO,
                              env=_env(head), capture_output=True, text=True)
        wall = time.time() - t
        line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"bench run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        report = json.loads(line[len("BENCH_JSON "):])
        return {"startup_seconds": report["startup_seconds"], "seconds": report["seconds"],
                "process_wall_seconds": round(wall, 2), "worker_preloaded": report.get("worker_preloaded"),
                "breakdown": report["startup_breakdown"]}


def _llmops(*args: str) -> None:
    subprocess.run([str(BIN / "llmops"), *args], cwd=REPO, env=_env(False), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_setting(setting: str, runs: int, settle: float) -> list[dict]:
    warm = setting == "head-warm"
    out = []
    if setting.startswith("head"):
        subprocess.run([str(BIN / "ray"), "stop"], capture_output=True)
        _llmops("ray", "up", "--warm-pool" if warm else "--no-warm-pool")
        try:
            for i in range(runs):
                time.sleep(settle)
                out.append(one_run(head=True, warm=warm))
                print(f"{setting} run {i + 1}: {out[-1]['startup_seconds']} s {out[-1]['breakdown']}", flush=True)
        finally:
            _llmops("ray", "down")
    else:
        for i in range(runs):
            out.append(one_run(head=False, warm=warm))
            print(f"{setting} run {i + 1}: {out[-1]['startup_seconds']} s {out[-1]['breakdown']}", flush=True)
    return out


def summarize(runs: list[dict]) -> dict:
    keys = list(runs[0]["breakdown"])
    return {
        "runs": runs,
        "median_startup_seconds": round(statistics.median(r["startup_seconds"] for r in runs), 2),
        "median_breakdown": {k: round(statistics.median(r["breakdown"][k] for r in runs), 2) for k in keys},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--settle", type=float, default=20.0, help="seconds between runs on a long-lived head")
    args = ap.parse_args()

    results: dict[str, list[dict]] = {s: [] for s in args.settings}
    for s in args.settings:
        results[s] = run_setting(s, args.runs, args.settle)

    summary = {s: summarize(r) for s, r in results.items()}
    ratios = {}
    for a, b in (("head-warm", "head-cold"), ("head-cold", "local"), ("head-warm", "local")):
        if a in summary and b in summary:
            ratios[f"{a} / {b}"] = round(summary[a]["median_startup_seconds"] / summary[b]["median_startup_seconds"], 3)
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    history = previous.get("history", [])
    if previous.get("label"):  # the older single-setting layout
        history.append({k: previous[k] for k in ("label", "ray_address", "median_startup_seconds", "median_breakdown",
                                                 "machine") if k in previous})
    elif previous.get("settings"):
        history.append({"measured_at": previous.get("measured_at"),
                        "median_startup_seconds": {s: v["median_startup_seconds"]
                                                   for s, v in previous["settings"].items()}})
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": {"num_workers": 2, "max_steps": 2, "per_device_batch_size": 1, "max_length": 128},
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "target_seconds": 15,
        "settle_seconds": args.settle,
        "settings": summary,
        "ratios": ratios,
        "history": history,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"medians": {s: v["median_startup_seconds"] for s, v in summary.items()}, "ratios": ratios},
                     indent=2))


if __name__ == "__main__":
    main()
