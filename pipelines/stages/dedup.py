"""dedup: exact duplicates first, then near-duplicates (MinHash-LSH clusters); one deterministic survivor each.

Exact: rows whose normalized text (NFKC, lowercase, collapsed whitespace, stripped) hashes the same form a group;
the row with the smallest doc_id survives. A choice that depends on the data only, never on partitioning or file
order.

Near-duplicate (on the exact survivors): `pipelines.data.near_duplicates` (MinHash-LSH candidates verified on
exact shingle Jaccard, connected components; the smallest doc_id of each component survives), by the definition
in `dedup.near_duplicate`, the same one the validate suite measures by. Every other member is rejected with reason
`near_duplicate` and `duplicate_of` = the survivor.

Every dropped row goes to the rejects table with its reason, rule and the doc_id it duplicates; `in == out +
dropped(exact) + dropped(near)` is checked on what was written. The output has the same columns as the input
(every column is passed through). A cluster report (JSON + HTML: sizes, largest clusters with example texts) is
written next to the metrics.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, TypedDict

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.data import text
from pipelines.data.near_duplicates import Cluster, NearDuplicate, find_near_duplicates
from pipelines.schema import CORPUS_COLUMNS, MAX_RAW_CHARS
from pipelines.engines.spark import count_by, session, spark_path
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_path, write_json, write_text
from pipelines.reports import render
from pipelines.errors import StageFailed

SECTION = "dedup"
STAGE = "dedup"
RULE = "sha256(NFKC + lowercase + collapsed whitespace + strip of text) equals that of duplicate_of"
TEMPLATE = "dedup_clusters.html.j2"  # reports/dedup_clusters.html


class Config(StageConfig):
    input_dir: str
    output_dir: str
    rejects_dir: str
    metrics: str
    cluster_report: str
    cluster_html: str
    output_files: int = Field(ge=1)
    near_duplicate: NearDuplicate  # what "near-duplicate" means; the validate suite measures by the same section


# --- exact ---------------------------------------------------------------------------------------------------


def _normalized_hash(col):
    """sha256 of `pipelines.data.text.normalize_text` (as `text_key`). Spark SQL has no NFKC, so a Python UDF
    normalizes; the module is stdlib only and pickled by value, so executors need neither this package nor pandas."""
    from pyspark import cloudpickle
    from pyspark.sql import functions as F

    cloudpickle.register_pickle_by_value(text)
    # useArrow=False: Spark 4 defaults Python UDFs to Arrow, which would need pyarrow on every executor.
    return F.sha2(F.udf(text.normalize_text, "string", useArrow=False)(col), 256)


def _mark(df):
    """Per row: `_hash`, `_rank` within its hash group (1 = survivor), `_survivor` doc_id and `_group_size`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_hash = Window.partitionBy("_hash")
    ordered = by_hash.orderBy("doc_id", "source")
    return (
        df.withColumn("_hash", _normalized_hash(F.col("text")))
        .withColumn("_rank", F.row_number().over(ordered))
        .withColumn("_survivor", F.first("doc_id").over(ordered))
        .withColumn("_group_size", F.count(F.lit(1)).over(by_hash))
    )


def _rejects(dropped, reason: str, rule: str):
    from pyspark.sql import functions as F

    return dropped.select(
        "source",
        F.lit(None).cast("string").alias("path"),
        F.lit(None).cast("long").alias("line"),
        F.substring("text", 1, MAX_RAW_CHARS).alias("raw"),
        F.lit(reason).alias("reason"),
        F.lit(rule).alias("rule"),
        F.lit(STAGE).alias("stage"),
        "doc_id",
        F.col("_survivor").alias("duplicate_of"),
    )


# --- stage ---------------------------------------------------------------------------------------------------


# Functional form: "in" is a Python keyword.
DedupReport = TypedDict("DedupReport", {
    "stage": str, "in": int, "out": int, "dropped": int, "dropped_by_reason": dict[str, int],
    "duplicate_groups": int,
    "near_duplicate": dict[str, Any],  # {"enabled": bool} and, when enabled, the NearDuplicateStats
    "out_by_source": dict[str, int],
    "dropped_by_source": dict[str, int], "balanced": bool, "output_dir": str, "rejects_dir": str,
    "cluster_report": str,
})


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> DedupReport:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = session(engines, spark)
    corpus = spark.read.parquet(spark_path(cfg.input_dir))
    missing = [c for c in CORPUS_COLUMNS if c not in corpus.columns]
    if missing:
        raise StageFailed(f"dedup: {cfg.input_dir} lacks corpus column(s) {', '.join(missing)}; run ingest first")
    columns = list(corpus.columns)  # every column passes through (CORPUS_COLUMNS may grow)
    marked = _mark(corpus).persist(StorageLevel.MEMORY_AND_DISK)

    stats = marked.agg(
        F.count(F.lit(1)).alias("in"),
        F.sum(F.when((F.col("_rank") == 2), 1).otherwise(0)).alias("groups"),
    ).first()
    n_in, groups = stats["in"], stats["groups"] or 0
    exact_kept = marked.where(F.col("_rank") == 1).select(*columns)
    exact_dropped = marked.where(F.col("_rank") > 1)

    nd = cfg.near_duplicate
    near_stats: dict[str, Any] = {"enabled": nd.enabled}
    clusters: list[Cluster] = []
    if nd.enabled:
        found = find_near_duplicates(spark, exact_kept, nd)
        assign, clusters = found.assign, found.clusters
        near_stats.update(found.stats)
        kept = exact_kept.join(assign.select("doc_id"), "doc_id", "left_anti").select(*columns)
        near_dropped = exact_kept.join(assign, "doc_id")
    else:
        kept = exact_kept
        near_dropped = None

    with atomic_path(cfg.output_dir) as out_tmp, atomic_path(cfg.rejects_dir) as rej_tmp:
        kept.orderBy("doc_id").coalesce(cfg.output_files).write.parquet(spark_path(out_tmp))
        dropped = _rejects(exact_dropped, "exact_duplicate", RULE)
        if near_dropped is not None:
            dropped = dropped.unionByName(_rejects(near_dropped, "near_duplicate", nd.rule()))
        dropped.orderBy("reason", "duplicate_of", "doc_id").coalesce(1).write.parquet(spark_path(rej_tmp))
        # Count what was written: the equation must hold for the files the next stages read.
        by_source = count_by(spark.read.parquet(spark_path(out_tmp)), "source")
        n_out = sum(by_source.values())
        rejected = count_by(spark.read.parquet(spark_path(rej_tmp)), "reason", "source")
        by_reason: Counter = Counter()
        dropped_by_source: Counter = Counter()
        for (reason, source), n in rejected.items():
            by_reason[reason] += n
            dropped_by_source[source] += n
        n_dropped = sum(by_reason.values())
        by_source = {k[0]: v for k, v in by_source.items()}
        if n_in != n_out + n_dropped:
            raise StageFailed(
                f"dedup accounting failed: in={n_in} != out={n_out} + dropped={n_dropped} ({by_reason})"
            )
    marked.unpersist()
    if nd.enabled:
        assign.unpersist()

    report: DedupReport = {
        "stage": STAGE,
        "in": n_in,
        "out": n_out,
        "dropped": n_dropped,
        "dropped_by_reason": {
            "exact_duplicate": by_reason.get("exact_duplicate", 0),
            "near_duplicate": by_reason.get("near_duplicate", 0),
        },
        "duplicate_groups": groups,
        "near_duplicate": near_stats,
        "out_by_source": dict(sorted(by_source.items())),
        "dropped_by_source": dict(sorted(dropped_by_source.items())),
        "balanced": n_in == n_out + n_dropped,
        "output_dir": cfg.output_dir,
        "rejects_dir": cfg.rejects_dir,
        "cluster_report": cfg.cluster_report,
    }
    write_json(cfg.metrics, report)
    full = {**report, "rule": nd.rule() if nd.enabled else "near-duplicate dedup disabled", "clusters": clusters}
    write_json(cfg.cluster_report, full)
    write_text(cfg.cluster_html, render(TEMPLATE, report=full, nd=full["near_duplicate"]))
    return report
