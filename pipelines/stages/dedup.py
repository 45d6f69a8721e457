"""dedup: drop exact duplicates, judged on normalized text (NFKC, lowercase, collapsed whitespace, stripped).

Within each group of rows whose normalized text hashes the same, the row with the smallest doc_id survives: a
choice that depends on the data only, never on partitioning or file order. Every dropped row goes to the
rejects table with reason `exact_duplicate` and the doc_id it duplicates; `in == out + dropped` is checked on
what was written. The output has the same schema as the input.
"""
from __future__ import annotations

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.data.schema import CORPUS_COLUMNS, MAX_RAW_CHARS
from pipelines.data.sparkio import session, spark_path
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_path, write_json
from pipelines.stages.errors import StageFailed

SECTION = "dedup"
STAGE = "dedup"
RULE = "sha256(NFKC + lowercase + collapsed whitespace + strip of text) equals that of duplicate_of"


class Config(StageConfig):
    input_dir: str = "data/interim/ingested"
    output_dir: str = "data/curated/corpus"
    rejects_dir: str = "data/rejects/dedup"
    metrics: str = "metrics/dedup.json"
    output_files: int = Field(default=1, ge=1)


def _normalized_hash(col):
    """sha256 of the normalized text. Spark SQL has no NFKC, so a Python UDF normalizes; it is self-contained
    (stdlib only, pickled by value) so executors need neither this package nor pandas installed.
    Same rule as `pipelines.data.text.normalize_text`."""
    from pyspark.sql import functions as F

    def normalize(text):
        import re
        import unicodedata

        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or "").lower()).strip()

    # useArrow=False: Spark 4 defaults Python UDFs to Arrow, which would need pyarrow on every executor.
    return F.sha2(F.udf(normalize, "string", useArrow=False)(col), 256)


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


def _rejects(dropped):
    from pyspark.sql import functions as F

    return dropped.select(
        "source",
        F.lit(None).cast("string").alias("path"),
        F.lit(None).cast("long").alias("line"),
        F.substring("text", 1, MAX_RAW_CHARS).alias("raw"),
        F.lit("exact_duplicate").alias("reason"),
        F.lit(RULE).alias("rule"),
        F.lit(STAGE).alias("stage"),
        "doc_id",
        F.col("_survivor").alias("duplicate_of"),
    )


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    from pyspark.sql import functions as F

    spark = session(engines, spark)
    corpus = spark.read.parquet(spark_path(cfg.input_dir))
    missing = [c for c in CORPUS_COLUMNS if c not in corpus.columns]
    if missing:
        raise StageFailed(f"dedup: {cfg.input_dir} lacks corpus column(s) {', '.join(missing)}; run ingest first")
    marked = _mark(corpus.select(*CORPUS_COLUMNS)).cache()

    stats = marked.agg(
        F.count(F.lit(1)).alias("in"),
        F.sum(F.when((F.col("_rank") == 2), 1).otherwise(0)).alias("groups"),
    ).first()
    n_in, groups = stats["in"], stats["groups"] or 0

    with atomic_path(cfg.output_dir) as out_tmp, atomic_path(cfg.rejects_dir) as rej_tmp:
        kept = marked.where(F.col("_rank") == 1).select(*CORPUS_COLUMNS)
        kept.orderBy("doc_id").coalesce(cfg.output_files).write.parquet(spark_path(out_tmp))
        dropped = _rejects(marked.where(F.col("_rank") > 1))
        dropped.orderBy("duplicate_of", "doc_id").coalesce(1).write.parquet(spark_path(rej_tmp))
        # Count what was written: the equation must hold for the files the next stages read.
        written = spark.read.parquet(spark_path(out_tmp))
        n_out = written.count()
        n_dropped = spark.read.parquet(spark_path(rej_tmp)).count()
        by_source = {r["source"]: r["count"] for r in written.groupBy("source").count().collect()}
        if n_in != n_out + n_dropped:
            raise StageFailed(f"dedup accounting failed: in={n_in} != out={n_out} + dropped={n_dropped}")
    dropped_by_source = {
        r["source"]: r["count"] for r in marked.where(F.col("_rank") > 1).groupBy("source").count().collect()
    }
    marked.unpersist()

    report = {
        "stage": STAGE,
        "in": n_in,
        "out": n_out,
        "dropped": n_dropped,
        "dropped_by_reason": {"exact_duplicate": n_dropped},
        "duplicate_groups": groups,
        "out_by_source": dict(sorted(by_source.items())),
        "dropped_by_source": dict(sorted(dropped_by_source.items())),
        "balanced": n_in == n_out + n_dropped,
        "output_dir": cfg.output_dir,
        "rejects_dir": cfg.rejects_dir,
    }
    write_json(cfg.metrics, report)
    return report
