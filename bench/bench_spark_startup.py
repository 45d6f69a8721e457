"""Spark driver start-up with the JVM settings of `engines.spark` (pipelines/engines/spark_cds.py), side by side.

Settings (each run a fresh Python process, as every Spark stage is):
- default: no JVM flags;
- c1: `driver_java_options: -XX:TieredStopAtLevel=1` only;
- cds: the class-data archive only;
- cds+c1: both (what params.yaml ships).

Session: `get_spark` to a live session, then a first small job (range, group-by, collect). With `--workspace DIR`
(a reproduced workspace, e.g. one tests/e2e_support.py made) it also times `llmops run ingest` and `llmops run
dedup` there under each setting (wall and the stage's own CPU seconds). Runs are interleaved, medians reported.
Writes bench/results/spark_startup.json.

    .venv/bin/python bench/bench_spark_startup.py [--repeats 3] [--workspace /tmp/.../e2e0/repo]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "spark_startup.json"
BIN = Path(sys.executable).parent
SETTINGS = {"default": ("", False), "c1": ("-XX:TieredStopAtLevel=1", False), "cds": ("", True),
            "cds+c1": ("-XX:TieredStopAtLevel=1", True)}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from pipelines.engines.spark import get_spark
from pipelines.stages.registry import shared_config
spark = get_spark(shared_config("engines", spark={"driver_java_options": sys.argv[1],
                                                  "class_data_sharing": sys.argv[2] == "1"}).spark)
t1 = time.perf_counter()
spark.range(10000).selectExpr("id % 7 AS k").groupBy("k").count().collect()
t2 = time.perf_counter()
print("BENCH_JSON " + json.dumps({"session_s": round(t1 - t0, 2), "first_job_s": round(t2 - t1, 2)}))
"""


def session_run(setting: str) -> dict:
    opts, cds = SETTINGS[setting]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, opts, "1" if cds else "0"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(proc.stderr[-3000:])
    return {**json.loads(line[len("BENCH_JSON "):]), "process_s": round(time.perf_counter() - started, 2)}


def stage_run(ws: Path, stage: str, setting: str) -> dict:
    opts, cds = SETTINGS[setting]
    path = ws / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params["engines"]["spark"].update(driver_java_options=opts, class_data_sharing=cds)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        started = time.perf_counter()
        proc = subprocess.run([str(BIN / "llmops"), "run", stage], cwd=ws, capture_output=True, text=True,
                              timeout=900, env={**os.environ, "LLMOPS_ROOT": str(ws), "SPARK_LOCAL_IP": "127.0.0.1",
                                                "PATH": f"{BIN}:{os.environ['PATH']}"})
        wall = time.perf_counter() - started
    finally:
        path.write_text(original)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    resources = json.loads(proc.stdout[proc.stdout.index("{"):])["resources"]
    return {"wall_s": round(wall, 2), "cpu_s": resources["cpu_seconds"]}


def medians(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workspace", type=Path, default=None)
    args = ap.parse_args()
    from pipelines.engines import spark_cds

    built = time.perf_counter()
    archive = spark_cds.ensure_archive()  # built once here if missing, outside the timed runs
    result: dict = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
                    "archive": {"path": str(archive), "mb": round(archive.stat().st_size / 2**20, 1) if archive else None,
                                "ensure_s": round(time.perf_counter() - built, 1)},
                    "load_avg_before": os.getloadavg(), "session": {}, "stages": {}}
    runs: dict = {s: [] for s in SETTINGS}
    stage_runs: dict = {}
    for rep in range(args.repeats):
        for setting in SETTINGS:
            runs[setting].append(session_run(setting))
            print(rep, setting, runs[setting][-1], flush=True)
            if args.workspace:
                for stage in ("ingest", "dedup"):
                    stage_runs.setdefault(stage, {}).setdefault(setting, []).append(
                        stage_run(args.workspace, stage, setting))
                    print(rep, setting, stage, stage_runs[stage][setting][-1], flush=True)
    result["session"] = {s: {"runs": r, "median": medians(r)} for s, r in runs.items()}
    result["stages"] = {st: {s: {"runs": r, "median": medians(r)} for s, r in by.items()}
                        for st, by in stage_runs.items()}
    base = result["session"]["default"]["median"]
    result["ratios_to_default"] = {
        "session": {s: round(v["median"]["session_s"] / base["session_s"], 3) for s, v in result["session"].items()},
        **{f"{st}_wall": {s: round(v["median"]["wall_s"] / by["default"]["median"]["wall_s"], 3) for s, v in by.items()}
           for st, by in result["stages"].items()},
        **{f"{st}_cpu": {s: round(v["median"]["cpu_s"] / by["default"]["median"]["cpu_s"], 3) for s, v in by.items()}
           for st, by in result["stages"].items()}}
    result["load_avg_after"] = os.getloadavg()
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratios_to_default"], indent=1))


if __name__ == "__main__":
    main()
