"""The two tables ingest writes from its cleaned rows: the corpus (content-addressed doc ids, fixed schema) and the
rejects (every dropped record with its reason and rule). Both are written sorted, so a rerun writes the same rows
in the same order.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.engines.spark import spark_path
from pipelines.schema import CORPUS_COLUMNS

# Separates the parts hashed into doc_id, so ("ab", "c") and ("a", "bc") never collide.
_SEP = "\u001f"


def kept(cleaned):
    """The rows that passed every check and rule (`_reason` null)."""
    from pyspark.sql import functions as F

    return cleaned.where(F.col("_reason").isNull())


def rejected(cleaned):
    from pyspark.sql import functions as F

    return cleaned.where(F.col("_reason").isNotNull())


def with_doc_id(good):
    """sha256 of source + canonical content, so reruns give the same ids. A record repeated verbatim within a
    source gets its occurrence number hashed in as well: doc_id stays a key, and dedup still sees the repeat."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parts = [F.col(c) for c in ("source", "kind")] + [
        F.coalesce(F.col(c), F.lit("")) for c in ("prompt", "response", "title", "text")
    ] + [F.when(F.col("kind") == "preference", F.coalesce(F.col("rejected"), F.lit("")))]  # null: skipped by
    # concat_ws, so instruction and document rows keep the ids they had before preference rows existed
    base = F.sha2(F.concat_ws(_SEP, *parts), 256)
    occurrence = F.row_number().over(Window.partitionBy("_base").orderBy("_file", "_pos"))
    doc_id = F.when(F.col("_occ") == 1, F.col("_base")).otherwise(
        F.sha2(F.concat_ws(_SEP, F.col("_base"), F.col("_occ").cast("string")), 256)
    )
    return (
        good.withColumn("_base", base)
        .withColumn("_occ", occurrence)
        .withColumn("doc_id", doc_id)
        .withColumn("n_chars", F.length("text").cast("int"))
        .select(*CORPUS_COLUMNS)
    )


def reject_rows(bad, stage: str):
    """The rejects table's columns (the rule joined with its detail), plus `_file`/`_pos` to sort by."""
    from pyspark.sql import functions as F

    rule = F.when(F.col("_detail").isNotNull(), F.concat_ws(": ", "_rule", "_detail")).otherwise(F.col("_rule"))
    return bad.select(
        "source",
        F.col("_file").alias("path"),
        F.col("_line").alias("line"),
        F.col("_raw").alias("raw"),
        F.col("_reason").alias("reason"),
        rule.alias("rule"),
        F.lit(stage).alias("stage"),
        F.col("_file"),
        F.col("_pos"),
    )


def write_corpus(good, path: Path, files: int) -> None:
    # Sorted and coalesced: same input -> same rows in the same order, in a handful of files.
    good.orderBy("doc_id").coalesce(files).write.parquet(spark_path(str(path)))


def write_rejects(bad, path: Path) -> None:
    bad.orderBy("source", "_file", "_pos", "reason").drop("_file", "_pos").coalesce(1).write.parquet(
        spark_path(str(path))
    )
