"""Benchmark: the ingest stage (parse + normalize + quality rules + language id + PII redaction) on the t0 corpus.

Data: ../shared/data/corpus/t0_train_50k/data_per_template (55,185 JSONL prompt/completion rows in 283 files, one
per prompt template, 61 MB), read as ONE jsonl directory source (`kind: instruction`, `pii: redact`), with the
cleaning sections (normalize, language, quality, pii_entities) of params.yaml's `ingest`. Spark from
params.yaml's engines.spark (local[2] by default); session start is timed apart. Two runs: the first pays the
Python worker start-up and imports, the second is warm. docs/s = records in / wall seconds of `ingest.run`.

    .venv/bin/python bench/bench_ingest.py            # writes bench/results/ingest.json
    .venv/bin/python bench/bench_ingest.py --files 40 --runs 1   # a quick look on the first 40 template files
    .venv/bin/python bench/bench_ingest.py --files 10 --runs 1 --ner both   # NER off and on, side by side
      (--ner on adds pipelines.data.pii's NER_ENTITIES to pii_entities: Presidio + spaCy in the UDF; results go
      to bench/results/ingest_ner.json with the docs/s ratio on/off and the peak RSS of the process tree)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
T0 = REPO.parent / "shared" / "data" / "corpus" / "t0_train_50k" / "data_per_template"
RUNS = 2
# t0 as one ingest source (shared with bench_curate_t0.py); `path` is filled in by the caller.
T0_SOURCE = {"name": "t0_train_50k", "format": "jsonl", "kind": "instruction", "licence": "Apache-2.0",
             "pii": "redact", "fields": {"prompt": "prompt", "response": "completion"}}


def _t0_subset(files: int | None, work: Path) -> Path:
    """The t0 corpus, or its first `files` template files (symlinked into `work`)."""
    if not files:
        return T0
    subset = work / "subset"
    subset.mkdir()
    for f in sorted(T0.glob("*.jsonl"))[:files]:
        (subset / f.name).symlink_to(f)
    return subset


def main() -> dict:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=0, help="only the first N template files (0: all)")
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--ner", choices=("off", "on", "both"), default="off")
    args = ap.parse_args()
    if args.ner != "off":
        return _ner_side_by_side(args)
    if not T0.exists():
        raise SystemExit(f"t0 corpus not found at {T0}")
    from pipelines.engines.spark import get_spark
    from pipelines.stages import ingest
    from pipelines.stages.registry import shared_config, stage_config

    params = REPO / "params.yaml"
    engines = shared_config("engines", params)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    src_path = _t0_subset(args.files, work)
    cfg = stage_config(
        "ingest", params, sources=[{**T0_SOURCE, "path": str(src_path)}],
        output_dir=str(work / "ingested"), rejects_dir=str(work / "rejects"), metrics=str(work / "ingest.json"),
    )

    t0 = time.perf_counter()
    spark = get_spark(engines.spark)
    session_s = time.perf_counter() - t0
    runs: list[float] = []
    result: dict = {}
    try:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            report = ingest.run(cfg, spark=spark)
            runs.append(time.perf_counter() - t0)
            result = _result(report, runs, session_s, engines, src_path)  # written after every run
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


def _result(report: dict, runs: list[float], session_s: float, engines, src_path: Path) -> dict:
    total = report["total"]
    result = {
        "data": str(T0.relative_to(REPO.parent)),
        "files": len(list(Path(src_path).glob("*.jsonl"))),
        "spark_master": engines.spark.master,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "session_start_s": round(session_s, 2),
        "run_wall_s": [round(r, 2) for r in runs],
        "docs_in": total["in"],
        "docs_per_s_first_run": round(total["in"] / runs[0], 1),
        "docs_per_s_best": round(total["in"] / min(runs), 1),
        "out": total["out"],
        "rejected_by_reason": total["rejected_by_reason"],
        "rejected_by_rule": total["rejected_by_rule"],
        "pii_redacted": total["pii_redacted"],
        "languages_kept": dict(sorted(total["languages"].items(), key=lambda kv: -kv[1])[:10]),
        "normalized_changed": total["normalized_changed"],
        "balanced": total["balanced"],
    }
    out = REPO / "bench" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _peak_rss_sampler():
    """Peak RSS (MB) of this process and all its descendants (Spark's JVM and Python workers), sampled."""
    import threading

    import psutil

    peak = {"mb": 0.0}
    stop = threading.Event()

    def loop():
        me = psutil.Process()
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak["mb"] = max(peak["mb"], total / 2**20)
            stop.wait(0.5)

    threading.Thread(target=loop, daemon=True).start()
    return peak, stop


def _ner_side_by_side(args) -> dict:
    """NER off, then on, on the same files in one process and Spark session: docs/s ratio and peak memory."""
    from pipelines.data import pii
    from pipelines.engines.spark import get_spark
    from pipelines.stages import ingest
    from pipelines.stages.registry import shared_config, stage_config

    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    params = REPO / "params.yaml"
    engines = shared_config("engines", params)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-ner-"))
    src_path = _t0_subset(args.files, work)
    base = stage_config("ingest", params)
    spark = get_spark(engines.spark)
    result: dict = {"data": str(T0.relative_to(REPO.parent)), "files": len(list(src_path.glob("*.jsonl"))),
                    "spark_master": engines.spark.master, "cpu_count": os.cpu_count(), "modes": {}}
    try:
        for mode in ("off", "on"):
            entities = list(base.pii_entities) + (list(pii.NER_ENTITIES) if mode == "on" else [])
            cfg = stage_config("ingest", params, sources=[{**T0_SOURCE, "path": str(src_path)}],
                               pii_entities=entities, output_dir=str(work / f"ingested_{mode}"),
                               rejects_dir=str(work / f"rejects_{mode}"), metrics=str(work / f"{mode}.json"))
            peak, stop = _peak_rss_sampler()
            walls = []
            for run in range(args.runs):
                for d in (work / f"ingested_{mode}", work / f"rejects_{mode}"):
                    shutil.rmtree(d, ignore_errors=True)
                t0 = time.perf_counter()
                report = ingest.run(cfg, spark=spark)
                walls.append(time.perf_counter() - t0)
            stop.set()
            total = report["total"]
            result["modes"][mode] = {"run_wall_s": [round(w, 2) for w in walls], "docs_in": total["in"],
                                     "docs_per_s_best": round(total["in"] / min(walls), 1),
                                     "peak_rss_mb": round(peak["mb"]), "pii_redacted": total["pii_redacted"],
                                     "pii_not_scanned": total["pii_not_scanned"], "out": total["out"]}
        off, on = result["modes"]["off"], result["modes"]["on"]
        result["ratio_on_off_docs_per_s"] = round(on["docs_per_s_best"] / off["docs_per_s_best"], 3)
        result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
        out = REPO / "bench" / "results" / "ingest_ner.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
