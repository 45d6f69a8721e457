"""Benchmark: the whole data plane chained on t0 -- ingest (parse, normalize, language, quality rules, PII) then
dedup (exact + MinHash-LSH near-duplicates) -- as `dvc repro` runs it, in one Spark session.

Data: ../shared/data/corpus/t0_train_50k/data_per_template (55,185 JSONL rows) as one source, with params.yaml's
`ingest` cleaning sections and `dedup` settings. Records wall time per stage, docs/s over the chain (records in /
seconds of ingest + dedup, Spark session start apart) and the peak resident memory of this process tree (driver,
JVM and Python workers, sampled every 0.1 s). The first run pays Python-worker start-up; later runs are warm.

    .venv/bin/python bench/bench_curate_t0.py [--runs 2]     # writes bench/results/curate_t0.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
T0 = REPO.parent / "shared" / "data" / "corpus" / "t0_train_50k" / "data_per_template"
OUT = REPO / "bench" / "results" / "curate_t0.json"


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if not T0.exists():
        raise SystemExit(f"t0 corpus not found at {T0}")
    from bench_dedup import PeakRSS
    from bench_ingest import T0_SOURCE

    from pipelines.engines.spark import get_spark
    from pipelines.stages import dedup, ingest
    from pipelines.stages.registry import shared_config, stage_config

    params = REPO / "params.yaml"
    engines = shared_config("engines", params)
    work = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    t = time.perf_counter()
    spark = get_spark(engines.spark)
    session_s = time.perf_counter() - t
    runs = []
    try:
        for r in range(args.runs):
            ingest_cfg = stage_config(
                "ingest", params, sources=[{**T0_SOURCE, "path": str(T0)}],
                output_dir=str(work / f"ingested_{r}"), rejects_dir=str(work / f"ingest_rejects_{r}"),
                metrics=str(work / "ingest.json"),
            )
            dedup_cfg = stage_config(
                "dedup", params,
                input_dir=str(work / f"ingested_{r}"), output_dir=str(work / f"deduplicated_{r}"),
                rejects_dir=str(work / f"dedup_rejects_{r}"), metrics=str(work / "dedup.json"),
                cluster_report=str(work / "clusters.json"), cluster_html=str(work / "clusters.html"),
            )
            with PeakRSS() as mem:
                t = time.perf_counter()
                ing = ingest.run(ingest_cfg, spark=spark)
                t_ingest = time.perf_counter() - t
                ded = dedup.run(dedup_cfg, spark=spark)
                total = time.perf_counter() - t
            run = {
                "ingest_s": round(t_ingest, 2), "dedup_s": round(total - t_ingest, 2), "total_s": round(total, 2),
                "docs_per_s": round(ing["total"]["in"] / total, 1), "peak_rss_mib": round(mem.peak_mib),
                "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            }
            print(f"run {r + 1}: {run}", flush=True)
            runs.append(run)
            shutil.rmtree(work / f"ingested_{r}", ignore_errors=True)
            shutil.rmtree(work / f"deduplicated_{r}", ignore_errors=True)
        result = {
            "data": str(T0.relative_to(REPO.parent)),
            "spark_master": engines.spark.master,
            "cpu_count": os.cpu_count(),
            "session_start_s": round(session_s, 2),
            "runs": runs,
            "total_s_median": statistics.median(x["total_s"] for x in runs),
            "docs_per_s_median": statistics.median(x["docs_per_s"] for x in runs),
            "peak_rss_mib_max": max(x["peak_rss_mib"] for x in runs),
            "accounting": {
                "records_in": ing["total"]["in"],
                "ingest_rejected_by_reason": ing["total"]["rejected_by_reason"],
                "ingest_out": ing["total"]["out"],
                "dedup_dropped_by_reason": ded["dropped_by_reason"],
                "final_out": ded["out"],
                "balanced": ing["total"]["in"] == ded["out"] + sum(ing["total"]["rejected_by_reason"].values())
                + sum(ded["dropped_by_reason"].values()),
            },
            "near_duplicate": ded["near_duplicate"],
        }
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
