"""Benchmark: the dedup stage (exact + MinHash-LSH near-duplicates) on Spark vs datasketch in one Python process.

Data: the t0 corpus in ../shared/data/corpus/t0_train_50k (55k JSONL prompt/completion rows, 283 templates), read
with a small Spark reader into the corpus schema (text = prompt + blank line + completion, doc_id = sha256 of
template + text), as ingest would shape it.

Three parts, one process, one machine state:
1. pipeline: read t0 with Spark + the dedup stage (exact, then near-duplicate, writes + accounting): wall time,
   docs/s, peak RSS of the whole process tree (driver, JVM, Python workers; psutil sampling every 0.1 s).
2. quality: on a sample of whole dataset families (every template of a family, so that the near-duplicates across
   templates are in it), exact Jaccard over ALL pairs (sparse shingle matrix product) gives the true pairs with
   J >= threshold; the stage's own Spark functions give the pairs found (verified LSH candidates). Precision,
   recall, F1; also with the default bucket cap (stars) and as co-clustered pairs.
3. speed curve: the same MinHash parameters (shingles, num_perm, bands x rows) with datasketch MinHash
   (update_batch) + MinHashLSH (insert, query) + union-find in this one Python process, vs the Spark stage on
   local[2], at ~55k, ~220k and ~550k documents (the exact-deduplicated corpus replicated; each copy perturbed by
   dropping and swapping a few words, so every copy is a near-duplicate and not an exact one). datasketch's time
   starts from texts in memory (no reading, no writing, no verification): a conservative comparison for Spark,
   whose time includes reading the Parquet input, exact dedup, verification and writing outputs + rejects.

    .venv/bin/python bench/bench_dedup.py                    # writes bench/results/dedup.json
    .venv/bin/python bench/bench_dedup.py --sizes 1 4        # 55k and 220k only
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
T0 = REPO.parent / "shared" / "data" / "corpus" / "t0_train_50k" / "data_per_template"
OUT = REPO / "bench" / "results" / "dedup.json"


class PeakRSS:
    """Peak resident memory of this process and all its descendants (JVM, Python workers), sampled."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def peak_mib(self) -> float:
        return round(self.peak / 2**20, 1)


def read_t0(spark):
    """t0 JSONL -> corpus columns (Spark)."""
    from pyspark.sql import functions as F

    df = spark.read.schema("prompt string, completion string").json(str(T0))
    source = F.regexp_extract(F.input_file_name(), r"([^/]+)\.jsonl$", 1)
    prompt = F.trim("prompt")
    response = F.trim(F.regexp_replace("completion", r"<\|endoftext\|>", ""))
    text = F.concat_ws("\n\n", prompt, response)
    return df.select(
        F.sha2(F.concat_ws("\u001f", source, text), 256).alias("doc_id"),
        source.alias("source"),
        F.lit("Apache-2.0").alias("licence"),
        F.lit("instruction").alias("kind"),
        text.alias("text"),
        prompt.alias("prompt"),
        response.alias("response"),
        F.lit(None).cast("string").alias("title"),
        F.length(text).cast("int").alias("n_chars"),
    )


def perturb(text: str, rng: random.Random, ops: int = 3) -> str:
    words = text.split()
    for _ in range(ops):
        if len(words) < 4:
            break
        i = rng.randrange(len(words) - 1)
        if rng.random() < 0.5:
            del words[i]
        else:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


# --- datasketch reference ------------------------------------------------------------------------------------


def datasketch_dedup(texts: list[str], shingle: int, num_perm: int, bands: int, rows: int, threshold: float) -> dict:
    """MinHash per doc (update_batch over the same word shingles), MinHashLSH insert + query, union-find."""
    from datasketch import MinHash, MinHashLSH

    from pipelines.data.near_duplicates import components_driver
    from pipelines.data.text import words

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    sigs = []
    for i, text in enumerate(texts):
        w = words(text)
        if not w:
            sigs.append(None)
            continue
        grams = {" ".join(w[j:j + shingle]) for j in range(max(len(w) - shingle + 1, 1))}
        m = MinHash(num_perm=num_perm)
        m.update_batch([g.encode("utf-8") for g in grams])
        sigs.append(m)
        lsh.insert(i, m)
    t_build = time.perf_counter() - t
    edges = []
    for i, m in enumerate(sigs):
        if m is not None:
            edges.extend((min(i, j), max(i, j)) for j in lsh.query(m) if j != i)
    root = components_driver(edges)
    dropped = sum(1 for n, r in root.items() if n != r)
    return {"seconds": time.perf_counter() - t, "build_seconds": t_build, "candidate_pairs": len(set(edges)),
            "near_duplicate_dropped": dropped}


# --- parts ---------------------------------------------------------------------------------------------------


def part_pipeline(spark, work: Path, nd, runs: int) -> dict:
    from pipelines.stages import dedup
    from pipelines.stages.registry import stage_config

    times, peaks, report = [], [], None
    for r in range(runs):
        ingested = work / f"t0_ingested_{r}"
        cfg = stage_config("dedup", REPO / "params.yaml", input_dir=str(ingested), output_dir=str(work / f"t0_out_{r}"),
                           rejects_dir=str(work / f"t0_rej_{r}"), metrics=str(work / "t0_m.json"),
                           cluster_report=str(work / "t0_c.json"), cluster_html=str(work / "t0_c.html"),
                           near_duplicate=nd)
        with PeakRSS() as mem:
            t = time.perf_counter()
            read_t0(spark).write.parquet(str(ingested))
            t_read = time.perf_counter() - t
            report = dedup.run(cfg, spark=spark)
            total = time.perf_counter() - t
        times.append((total, t_read))
        peaks.append(mem.peak_mib)
    med = statistics.median(t for t, _ in times)
    return {
        "docs_in": report["in"],
        "docs_out": report["out"],
        "dropped_by_reason": report["dropped_by_reason"],
        "near_duplicate": report["near_duplicate"],
        "runs": runs,
        "seconds_median": round(med, 2),
        "seconds_all": [round(t, 2) for t, _ in times],
        "read_seconds_all": [round(t, 2) for _, t in times],
        "docs_per_second": round(report["in"] / med, 1),
        "peak_rss_mib_max": max(peaks),
        "note": "read t0 JSONL with Spark into the corpus schema + dedup stage (exact + near + writes + checks); "
                "the ingest stage's cleaning/PII is not included (its own benchmark); Spark session already up",
    }


def sample_families(texts_by_source: list[tuple[str, str]], target: int, seed: int = 0,
                    max_files: int = 4) -> list[str]:
    """Whole templates of random dataset families (at most `max_files` templates each) until `target` docs."""
    fam_files: dict[str, dict[str, list[str]]] = {}
    for src, text in texts_by_source:
        fam_files.setdefault(src.split("_")[0], {}).setdefault(src, []).append(text)
    fams = sorted(fam_files)
    random.Random(seed).shuffle(fams)
    out: list[str] = []
    for fam in fams:
        for src in sorted(fam_files[fam])[:max_files]:
            out.extend(fam_files[fam][src])
        if len(out) >= target:
            break
    return out


def precision_recall_f1(found: set, truth: set) -> dict:
    tp = len(found & truth)
    p = tp / len(found) if found else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def part_quality(spark, corpus_rows: list[tuple[str, str]], nd, target: int, caps: list[int]) -> dict:
    import numpy as np
    import scipy.sparse as sp

    from pipelines.data import minhash
    from pipelines.data import near_duplicates as near

    texts = sample_families(corpus_rows, target)
    values, offsets = minhash.shingle_sets(texts, nd.shingle)
    sizes = np.diff(offsets)
    _, col = np.unique(values, return_inverse=True)
    x = sp.csr_matrix((np.ones(len(values), dtype=np.float32), col, offsets), shape=(len(texts), col.max() + 1))
    inter = (x @ x.T).tocoo()
    upper = inter.row < inter.col
    a, b, n = inter.row[upper], inter.col[upper], inter.data[upper]
    jac = n / (sizes[a] + sizes[b] - n)
    true = {(int(i), int(j)) for i, j in zip(a[jac >= nd.threshold], b[jac >= nd.threshold])}

    docs = spark.createDataFrame([(f"{i:07d}", t) for i, t in enumerate(texts)], "doc_id string, text string")
    sig = near.signature_table(docs, nd).cache()
    out = {"sample_docs": len(texts), "true_pairs": len(true),
           "true_pair_jaccard_histogram": dict(zip(
               ["0.80-0.85", "0.85-0.90", "0.90-0.95", "0.95-1.00"],
               np.histogram(jac[jac >= nd.threshold], bins=[nd.threshold, 0.85, 0.9, 0.95, 1.0001])[0].tolist()))}

    def score(found: set) -> dict:
        return {"found": len(found), **precision_recall_f1(found, true)}

    def dropped(pairs: set) -> set:
        """Documents a dedup with these verified pairs drops: every non-root member of a component."""
        root = near.components_driver(list(pairs))
        return {n for n, r in root.items() if n != r}

    true_dropped = dropped(true)
    out["documents_to_drop"] = len(true_dropped)

    def score_dropped(found: set) -> dict:
        got = dropped(found)
        return {"dropped": len(got), **precision_recall_f1(got, true_dropped)}

    variants = [("all_pairs_in_buckets", 10**9)] + [
        (f"{'default_' if c == nd.max_bucket_size else ''}cap_{c}", c) for c in sorted(set(caps) | {nd.max_bucket_size})]
    for name, cap in variants:
        candidates = near.candidate_pairs(sig, cap).cache()
        t = time.perf_counter()
        n_candidates = candidates.count()
        edges = near.verified_edges(candidates, sig, nd.threshold)
        found = {(int(r["a"]), int(r["b"])) for r in edges.select("a", "b").collect()}
        out[f"pairs_{name}"] = {**score(found), "candidate_pairs": n_candidates,
                                "seconds": round(time.perf_counter() - t, 2),
                                "dropped_documents": score_dropped(found)}
        candidates.unpersist()
        if name.startswith("default"):
            # What dedup decides: pairs put in one cluster (transitive, so some have J below the threshold).
            root = near.components_driver([(f"{i:07d}", f"{j:07d}") for i, j in found])
            groups: dict[str, list[int]] = {}
            for node, r in root.items():
                groups.setdefault(r, []).append(int(node))
            co = {(min(u, v), max(u, v)) for g in groups.values() for k, u in enumerate(g) for v in g[k + 1:]}
            out["co_clustered_pairs"] = score(co)
    sig.unpersist()
    out["s_curve"] = {str(j): round(minhash.candidate_probability(j, nd.bands, nd.rows), 4)
                      for j in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)}
    return out


def part_speed(spark, work: Path, base: list[tuple[str, str, str]], nd, factors: list[int], runs: int) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import CORPUS_COLUMNS
    from pipelines.stages import dedup
    from pipelines.stages.registry import stage_config

    rows_out = []
    for factor in factors:
        rng = random.Random(factor)
        docs = list(base)
        for c in range(1, factor):
            docs.extend((f"{d}-{c}", s, perturb(t, rng)) for d, s, t in base)
        texts = [t for _, _, t in docs]
        path = work / f"speed_{factor}"
        table = pa.table({
            "doc_id": [d for d, _, _ in docs], "source": [s for _, s, _ in docs],
            "licence": ["Apache-2.0"] * len(docs), "kind": ["instruction"] * len(docs), "text": texts,
            "prompt": texts, "response": [""] * len(docs), "title": pa.nulls(len(docs), pa.string()),
            "n_chars": pa.array([len(t) for t in texts], pa.int32()),
        }).select(list(CORPUS_COLUMNS))
        path.mkdir()
        for k in range(0, len(docs), 50_000):  # several files so Spark reads in parallel
            pq.write_table(table.slice(k, 50_000), path / f"part-{k // 50_000:04d}.parquet")
        spark_t, ds_t, spark_peak, ds_peak, rep, ref = [], [], [], [], None, None
        for r in range(runs):  # interleaved
            cfg = stage_config("dedup", REPO / "params.yaml", input_dir=str(path), output_dir=str(work / f"o{factor}_{r}"),
                               rejects_dir=str(work / f"r{factor}_{r}"), metrics=str(work / "m.json"),
                               cluster_report=str(work / "c.json"), cluster_html=str(work / "c.html"),
                               near_duplicate=nd)
            with PeakRSS() as mem:
                t = time.perf_counter()
                rep = dedup.run(cfg, spark=spark)
                spark_t.append(time.perf_counter() - t)
            spark_peak.append(mem.peak_mib)
            print(f"spark {len(docs)} docs: {spark_t[-1]:.1f} s, peak {mem.peak_mib:.0f} MiB, {rep['dropped_by_reason']}",
                  flush=True)
            with PeakRSS() as mem:
                ref = datasketch_dedup(texts, nd.shingle, nd.num_perm, nd.bands, nd.rows, nd.threshold)
            ds_t.append(ref["seconds"])
            ds_peak.append(mem.peak_mib)
        s_med, d_med = statistics.median(spark_t), statistics.median(ds_t)
        row = {
            "docs": len(docs), "factor": factor, "runs": runs,
            "spark_seconds_median": round(s_med, 2), "spark_seconds_all": [round(x, 2) for x in spark_t],
            "datasketch_seconds_median": round(d_med, 2), "datasketch_seconds_all": [round(x, 2) for x in ds_t],
            "ratio_spark_over_datasketch": round(s_med / d_med, 3),
            "spark_docs_per_second": round(len(docs) / s_med, 1),
            "datasketch_docs_per_second": round(len(docs) / d_med, 1),
            "spark_dropped": rep["dropped_by_reason"], "spark_near": rep["near_duplicate"],
            "datasketch_near_duplicate_dropped": ref["near_duplicate_dropped"],
            "datasketch_candidate_pairs": ref["candidate_pairs"],
            "spark_peak_rss_mib": max(spark_peak), "datasketch_peak_rss_mib_process_tree": max(ds_peak),
        }
        print(json.dumps(row), flush=True)
        rows_out.append(row)
        shutil.rmtree(path, ignore_errors=True)
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 10], help="replication factors of t0")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement at 55k (1 beyond)")
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--caps", type=int, nargs="*", default=[50, 200, 1000],
                    help="max_bucket_size values scored in the quality part (besides all pairs and the default)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "quality", "speed"])
    args = ap.parse_args()
    if not T0.exists():
        sys.exit(f"t0 corpus not found at {T0}")

    import platform

    from pipelines.engines.spark import get_spark
    from pipelines.stages import dedup
    from pipelines.stages.registry import shared_config

    nd = shared_config("near_duplicate", REPO / "params.yaml")
    engines = shared_config("engines", REPO / "params.yaml", spark={
        "master": "local[2]", "app_name": "bench-dedup", "driver_memory": "6g", "shuffle_partitions": 8})
    spark = get_spark(engines.spark)
    work = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # Parts not run this time keep their previous figures (each part records its own conditions).
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work)",
                   "spark_master": "local[2]", "params": nd.model_dump()})
    try:
        t0 = read_t0(spark)
        # Exact-deduplicated base (what near-dup sees), collected once for the quality and speed parts.
        marked = dedup._mark(t0).where("_rank = 1").select("doc_id", "source", "text").orderBy("doc_id")
        base = [(r["doc_id"], r["source"], r["text"]) for r in marked.collect()]
        result["t0_docs_exact_deduplicated"] = len(base)
        if "pipeline" not in args.skip:
            result["pipeline_t0"] = part_pipeline(spark, work, nd, args.runs)
            result["pipeline_t0"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(result["pipeline_t0"]), flush=True)
            OUT.write_text(json.dumps(result, indent=2) + "\n")
        if "quality" not in args.skip:
            result["quality"] = part_quality(spark, [(s, t) for _, s, t in base], nd, args.sample, args.caps)
            result["quality"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(result["quality"]), flush=True)
            OUT.write_text(json.dumps(result, indent=2) + "\n")
        if "speed" not in args.skip:
            result["speed"] = []
            for f in args.sizes:
                result["speed"] += part_speed(spark, work, base, nd, [f], args.runs if f == 1 else 1)
                OUT.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        spark.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
