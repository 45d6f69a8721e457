"""Readers for the ingest stage's raw sources: one Spark DataFrame of raw records per source, whatever the format.

Every reader returns the same columns: `_file` (the file a record came from, as the source declared it),
`_pos` (its order inside that file), `_line` (1-based line for JSONL, else null), `_raw` (the record's text as
read, for the rejects table), one string column per mapped raw field, and `_corrupt_record` (set when the record
did not parse). Formats:

- `jsonl`: one JSON object per line; `.gz` (and other Hadoop codecs) decompressed by extension; a directory or glob
  of files is one source. Line numbers are true per-file line numbers (blank lines counted, never records).
- `json`: a JSON array of objects per file (or a single object).
- `csv`: a header line, then rows; quoted fields may span lines. A mapped column absent from the header is read as
  null (every row is then rejected as missing_field, with a note); a row with the wrong number of fields is
  `_corrupt_record`.
- `parquet`: any schema; mapped columns are read as strings (nested values as JSON).
- `text`: a folder (searched recursively) of plain-text files, one document per file; the raw fields are `text`
  (the content) and `file` (the file's path relative to the folder).

`s3://` sources are copied with boto3 into a local staging directory first (endpoint and credentials from the
standard AWS environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). This PySpark ships no hadoop-aws jars; on a
cluster that has them, point Spark at `s3a://` URIs directly and set `staging_dir` to a shared filesystem (or skip
staging) instead.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipelines.data.source_config import Source
from pipelines.engines.spark import spark_path
from pipelines.io import sweep_stale, tmp_sibling
from pipelines.storage.s3 import split_uri

CORRUPT = "_corrupt_record"


@dataclass
class RawRecords:
    df: object  # pyspark DataFrame
    blank_lines: int = 0
    notes: list[str] = field(default_factory=list)


# --- s3 staging ----------------------------------------------------------------------------------------------


def stage_s3(uri: str, dest: Path, name: str) -> Path:
    """Copy the object `uri` (or every object under the prefix `uri`) to `dest`, atomically (temp dir + rename).

    Returns the local file or directory mirroring the URI. Raises FileNotFoundError naming the source when the
    bucket or the key does not exist.
    """
    import boto3
    from botocore.exceptions import ClientError

    bucket, key = split_uri(uri)
    client = boto3.client("s3")  # AWS_ENDPOINT_URL / AWS_* credentials from the environment, never from the repo
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise FileNotFoundError(f"ingest source '{name}': bucket '{bucket}' of {uri} not found or not readable "
                                f"({code or exc})") from None
    single = False
    if key and not key.endswith("/"):
        try:
            client.head_object(Bucket=bucket, Key=key)
            single = True
        except ClientError:
            pass
    keys: list[str] = []
    if single:
        keys = [key]
    else:
        prefix = key if not key or key.endswith("/") else key + "/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        if not keys:
            raise FileNotFoundError(f"ingest source '{name}': no object at {uri} (no key and no key under it)")
    final = dest / name
    dest.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)  # a staging copy killed mid-download
    tmp = tmp_sibling(final)
    tmp.mkdir()
    try:
        base = key if single else (key if not key or key.endswith("/") else key + "/")
        for k in sorted(keys):
            rel = Path(k).name if single else k[len(base):]
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, k, str(target))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / Path(key).name if single else final


@contextmanager
def staging_area(staging_dir: str | None) -> Iterator[Path]:
    """Where s3:// sources are copied: `staging_dir` when set (kept), else a temp dir removed afterwards. Spark
    reads lazily, so the block must cover everything that reads the staged files."""
    if staging_dir:
        yield Path(staging_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="llmops-ingest-staging-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_exists(src: Source) -> None:
    """A local source that matches no file fails before Spark starts (an s3:// one fails when staged)."""
    if "://" not in src.path and not glob.glob(src.path):
        raise FileNotFoundError(f"ingest source '{src.name}': {src.path} does not exist")


def local_path(src: Source, staging: Path) -> Path:
    """The local file or directory Spark reads for `src`: its own path, or its s3:// objects staged."""
    if src.path.startswith("s3://"):
        return stage_s3(src.path, staging, src.name)
    if "://" in src.path:
        raise ValueError(f"ingest source '{src.name}': only local paths and s3:// URIs are read, not {src.path}")
    return Path(src.path)


# --- reading -------------------------------------------------------------------------------------------------


def _display_file(local: Path, declared: str):
    """`_metadata.file_path` (a file: URI) mapped back to the path the source declared (or its s3:// URI)."""
    from pyspark.sql import functions as F

    fp = F.col("_metadata.file_path")
    if local.is_file():
        return F.lit(declared)
    prefix = "file:" + str(local.resolve()).rstrip("/") + "/"
    root = declared.rstrip("/") + "/"
    if any(ch in declared for ch in "*?["):  # a glob: show files relative to its directory
        root = str(Path(declared).parent) + "/"
    return F.when(fp.startswith(prefix), F.concat(F.lit(root), F.substring(fp, len(prefix) + 1, 1 << 30))).otherwise(
        F.regexp_replace(fp, "^file:", "")
    )


def _field_cols(df, names: list[str]):
    """Each mapped field as a string column (JSON text for nested values); absent ones as null, listed."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    types = {f.name: f.dataType for f in df.schema.fields}
    cols, missing = [], []
    for n in names:
        if n not in types:
            missing.append(n)
            cols.append(F.lit(None).cast("string").alias(n))
        elif isinstance(types[n], (T.StructType, T.ArrayType, T.MapType)):
            cols.append(F.to_json(F.col(f"`{n}`")).alias(n))
        else:
            cols.append(F.col(f"`{n}`").cast("string").alias(n))
    return cols, missing


def _string_schema(names: list[str]):
    from pyspark.sql import types as T

    return T.StructType([*(T.StructField(n, T.StringType()) for n in names), T.StructField(CORRUPT, T.StringType())])


def read_jsonl(spark, src: Source, local: Path) -> RawRecords:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    names = src.fields.raw_fields()
    lines = spark.read.text(spark_path(local)).select(
        F.col("value").alias("_raw"),
        _display_file(local, src.path).alias("_file"),
        F.col("_metadata.file_block_start").alias("_blk"),
        F.monotonically_increasing_id().alias("_mid"),
    )
    # True per-file line numbers without a Python round trip: monotonically_increasing_id is consecutive inside a
    # partition and a file split is one partition, so line = offset in the split + lines in earlier splits.
    blocks = lines.groupBy("_file", "_blk").agg(F.min("_mid").alias("_m0"), F.count("*").alias("_n"))
    earlier = Window.partitionBy("_file").orderBy("_blk").rowsBetween(Window.unboundedPreceding, -1)
    blocks = blocks.withColumn("_before", F.coalesce(F.sum("_n").over(earlier), F.lit(0)))
    numbered = lines.join(blocks, ["_file", "_blk"]).withColumn(
        "_line", (F.col("_mid") - F.col("_m0") + F.col("_before") + 1).cast("long")
    )
    blank = F.trim(F.col("_raw")) == ""
    parsed = F.from_json("_raw", _string_schema(names), {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    rows = numbered.where(~blank).select("_file", "_line", "_raw", parsed.alias("_j"))
    df = rows.select(
        "_file",
        F.col("_line").alias("_pos"),
        "_line",
        "_raw",
        *[F.col(f"_j.`{n}`").alias(n) for n in names],
        # A line that is JSON but not an object parses to null or lands in the corrupt column: both are malformed.
        F.when(F.col("_j").isNull(), F.col("_raw")).otherwise(F.col(f"_j.{CORRUPT}")).alias(CORRUPT),
    )
    return RawRecords(df, numbered.where(blank).count())


def _finish(df, src: Source, local: Path, names: list[str], raw_col):
    from pyspark.sql import functions as F

    return df.select(
        _display_file(local, src.path).alias("_file"),
        F.monotonically_increasing_id().alias("_pos"),  # order inside a file (files are never split here)
        F.lit(None).cast("long").alias("_line"),
        raw_col.alias("_raw"),
        *[F.col(f"`{n}`") for n in names],
        F.col(CORRUPT),
    )


def read_json_array(spark, src: Source, local: Path) -> RawRecords:
    from pyspark.sql import functions as F

    names = src.fields.raw_fields()
    df = (
        spark.read.schema(_string_schema(names))
        .option("multiLine", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .json(spark_path(local))
    )
    raw = F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*[F.col(f"`{n}`") for n in names])))
    return RawRecords(_finish(df, src, local, names, raw))


def read_csv(spark, src: Source, local: Path) -> RawRecords:
    from pyspark.sql import functions as F

    names = src.fields.raw_fields()
    reader = spark.read.option("header", True).option("multiLine", True).option("escape", '"')
    header = reader.csv(spark_path(local)).columns  # the header line only: no schema inference
    df = (
        reader.schema(_string_schema(header))
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .csv(spark_path(local))
    )
    cols, missing = _field_cols(df, names)
    df = df.select(*cols, CORRUPT, "_metadata")
    raw = F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*[F.col(f"`{n}`") for n in names])))
    notes = [f"source '{src.name}': column(s) {', '.join(missing)} missing from the CSV header "
             f"{header}; every row is rejected as missing_field"] if missing else []
    return RawRecords(_finish(df, src, local, names, raw), notes=notes)


def read_parquet(spark, src: Source, local: Path) -> RawRecords:
    from pyspark.sql import functions as F

    names = src.fields.raw_fields()
    df = spark.read.parquet(spark_path(local))
    cols, missing = _field_cols(df, names)
    df = df.select(*cols, F.lit(None).cast("string").alias(CORRUPT), "_metadata")
    raw = F.to_json(F.struct(*[F.col(f"`{n}`") for n in names]))
    notes = [f"source '{src.name}': column(s) {', '.join(missing)} missing from the Parquet schema; every row is "
             "rejected as missing_field"] if missing else []
    return RawRecords(_finish(df, src, local, names, raw), notes=notes)


def read_text(spark, src: Source, local: Path) -> RawRecords:
    from pyspark.sql import functions as F

    df = (
        spark.read.option("recursiveFileLookup", True)
        .text(spark_path(local), wholetext=True)  # the keyword: text() resets a wholetext set by .option()
        .select(F.col("value").alias("text"), F.lit(None).cast("string").alias(CORRUPT), "_metadata")
    )
    root = src.path.rstrip("/") + "/"
    df = df.withColumn("file", F.regexp_replace(_display_file(local, src.path), "^" + _java_quote(root), ""))
    names = src.fields.raw_fields()
    return RawRecords(_finish(df, src, local, names, F.col("text")))


def _java_quote(s: str) -> str:
    return "\\Q" + s.replace("\\E", "\\E\\\\E\\Q") + "\\E"


READERS = {"jsonl": read_jsonl, "json": read_json_array, "csv": read_csv, "parquet": read_parquet,
           "text": read_text}
