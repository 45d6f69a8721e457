"""ingest: read the declared raw sources with Spark into one corpus table with a fixed schema.

Each source is a JSONL file (one record per line) or a JSON array file, mapped to the corpus columns by its
`fields`. Nothing is lost: a malformed line, a record missing a required field or a record with empty text goes
to the rejects table with its reason, and the stage refuses to finish unless `in == out + rejected` holds for
every source (counted on what was actually written). The same code runs on `local[*]` and on a cluster.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipelines.config import StageConfig
from pipelines.data.schema import CORPUS_COLUMNS, MAX_RAW_CHARS
from pipelines.data.sparkio import count_by, session, spark_path
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_path, write_json
from pipelines.stages.errors import StageFailed

SECTION = "ingest"
STAGE = "ingest"
_CORRUPT = "_corrupt_record"
# Separates the parts hashed into doc_id, so ("ab", "c") and ("a", "bc") never collide.
_SEP = "\u001f"


class FieldMap(StageConfig):
    """Which raw field feeds which corpus column. `prompt` may list several fields, joined by a blank line."""

    prompt: list[str] | None = None
    response: str | None = None
    text: str | None = None
    title: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def raw_fields(self) -> list[str]:
        names = [*(self.prompt or []), self.response, self.text, self.title]
        return list(dict.fromkeys(n for n in names if n))


class Source(StageConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    format: Literal["json", "jsonl"]
    kind: Literal["instruction", "document"]
    # Required: data whose licence nobody wrote down does not enter the corpus (None only to give a clear message).
    licence: str | None = Field(default=None, validate_default=True)
    fields: FieldMap

    @field_validator("licence")
    @classmethod
    def _licence_declared(cls, value: str | None, info: ValidationInfo) -> str:
        if value is None or not value.strip():
            name = info.data.get("name", "?")
            raise ValueError(
                f"source '{name}' declares no licence; every source must name its licence "
                "(an SPDX id such as MIT or CC-BY-SA-4.0) before it can be ingested"
            )
        return value.strip()

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "Source":
        need = ("prompt", "response") if self.kind == "instruction" else ("text",)
        missing = [k for k in need if not getattr(self.fields, k)]
        if missing:
            raise ValueError(f"source '{self.name}' (kind {self.kind}) must map fields: {', '.join(missing)}")
        return self


class Config(StageConfig):
    sources: list[Source] = Field(min_length=1)
    input_dir: str = "data/sample/raw"  # tracked by dvc as the stage's dependency; sources name their own paths
    output_dir: str = "data/interim/ingested"
    rejects_dir: str = "data/rejects/ingest"
    metrics: str = "metrics/ingest.json"
    output_files: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self


# --- reading -------------------------------------------------------------------------------------------------


def _check_exists(src: Source) -> None:
    if "://" not in src.path and not Path(src.path).exists():
        raise FileNotFoundError(f"ingest source '{src.name}': {src.path} does not exist")


def _raw_schema(src: Source):
    from pyspark.sql import types as T

    # Every field read as a string: Spark renders numbers and nested values as their JSON text.
    cols = [T.StructField(n, T.StringType()) for n in src.fields.raw_fields()]
    return T.StructType([*cols, T.StructField(_CORRUPT, T.StringType())])


def _read_jsonl(spark, src: Source):
    """One row per non-blank line: `_line` (1-based), `_raw` and the parsed fields (`_corrupt_record` if bad)."""
    from pyspark.sql import functions as F

    lines = spark.read.text(spark_path(src.path))
    # zipWithIndex gives true line numbers however the file is split across partitions.
    numbered = spark.createDataFrame(
        lines.rdd.zipWithIndex().map(lambda pair: (pair[1] + 1, pair[0][0])), "_line long, _raw string"
    )
    schema = _raw_schema(src)
    parsed = F.from_json("_raw", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    blank = F.trim(F.col("_raw")) == ""
    rows = numbered.where(~blank).select("_line", "_raw", parsed.alias("_j"))
    rows = rows.select(
        "_line",
        "_raw",
        *[F.col(f"_j.`{n}`").alias(n) for n in src.fields.raw_fields()],
        # A line that is JSON but not an object parses to null or lands in the corrupt column: both are malformed.
        F.when(F.col("_j").isNull(), F.col("_raw")).otherwise(F.col(f"_j.{_CORRUPT}")).alias(_CORRUPT),
    )
    return rows.withColumn("_pos", F.col("_line")), numbered.where(blank).count()


def _read_json_array(spark, src: Source):
    """One row per array element; a file that is not a JSON array of objects is one corrupt row."""
    from pyspark.sql import functions as F

    df = (
        spark.read.schema(_raw_schema(src))
        .option("multiLine", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
        .json(spark_path(src.path))
    )
    names = src.fields.raw_fields()
    raw = F.coalesce(F.col(_CORRUPT), F.to_json(F.struct(*[F.col(f"`{n}`") for n in names])))
    # A multiLine file is never split, so this id follows the element order of the file (and is stable).
    return (
        df.withColumn("_raw", raw)
        .withColumn("_line", F.lit(None).cast("long"))
        .withColumn("_pos", F.monotonically_increasing_id())
    ), 0


# --- classifying ---------------------------------------------------------------------------------------------


def _stripped(name: str):
    """The field with surrounding whitespace removed, and null when nothing is left."""
    from pyspark.sql import functions as F

    value = F.regexp_replace(F.col(f"`{name}`"), r"^\s+|\s+$", "")
    return F.when(value != "", value)


def _classify(df, src: Source):
    """Add the corpus columns and `_reason`/`_rule` (null for a good row) to one source's parsed rows."""
    from pyspark.sql import functions as F

    fm = src.fields
    malformed = F.col(_CORRUPT).isNotNull()
    what = "JSON object" if src.format == "jsonl" else "JSON array of objects"
    checks: list[tuple[Any, str, str]] = [(malformed, "malformed_json", f"not a valid {what}")]
    if src.kind == "instruction":
        parts = [_stripped(n) for n in fm.prompt or []]
        prompt = F.concat_ws("\n\n", *parts)
        prompt = F.when(prompt != "", prompt)
        response = _stripped(fm.response)
        text = F.concat_ws("\n\n", prompt, response)
        all_prompt_absent = F.lit(True)
        for n in fm.prompt or []:
            all_prompt_absent = all_prompt_absent & F.col(f"`{n}`").isNull()
        checks += [
            (all_prompt_absent, "missing_field", f"prompt field(s) {', '.join(fm.prompt or [])} absent or null"),
            (F.col(f"`{fm.response}`").isNull(), "missing_field", f"response field '{fm.response}' absent or null"),
            (prompt.isNull(), "empty_text", "prompt is empty or whitespace only"),
            (response.isNull(), "empty_text", "response is empty or whitespace only"),
        ]
    else:
        prompt = response = F.lit(None).cast("string")
        text = _stripped(fm.text)
        checks += [
            (F.col(f"`{fm.text}`").isNull(), "missing_field", f"text field '{fm.text}' absent or null"),
            (text.isNull(), "empty_text", "text is empty or whitespace only"),
        ]
    title = _stripped(fm.title) if fm.title else F.lit(None).cast("string")

    reason = rule = F.lit(None).cast("string")
    for cond, code, message in reversed(checks):  # first matching check wins
        reason = F.when(cond, F.lit(code)).otherwise(reason)
        rule = F.when(cond, F.lit(message)).otherwise(rule)
    return df.select(
        "_pos",
        "_line",
        "_raw",
        reason.alias("_reason"),
        rule.alias("_rule"),
        F.lit(src.name).alias("source"),
        F.lit(src.licence).alias("licence"),
        F.lit(src.kind).alias("kind"),
        text.alias("text"),
        prompt.alias("prompt"),
        response.alias("response"),
        title.alias("title"),
    )


def _with_doc_id(good):
    """sha256 of source + canonical content, so reruns give the same ids. A record repeated verbatim within a
    source gets its occurrence number hashed in as well: doc_id stays a key, and dedup still sees the repeat."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parts = [F.col(c) for c in ("source", "kind")] + [
        F.coalesce(F.col(c), F.lit("")) for c in ("prompt", "response", "title", "text")
    ]
    base = F.sha2(F.concat_ws(_SEP, *parts), 256)
    occurrence = F.row_number().over(Window.partitionBy("_base").orderBy("_pos"))
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


def _rejects(bad, src: Source):
    from pyspark.sql import functions as F

    return bad.select(
        F.lit(src.name).alias("source"),
        F.lit(src.path).alias("path"),
        F.col("_line").alias("line"),
        F.substring("_raw", 1, MAX_RAW_CHARS).alias("raw"),
        F.col("_reason").alias("reason"),
        F.col("_rule").alias("rule"),
        F.lit(STAGE).alias("stage"),
        F.col("_pos"),
    )


# --- accounting ----------------------------------------------------------------------------------------------


def _source_report(src: Source, n_in: int, n_out: int, by_reason: dict[str, int], blank: int) -> dict:
    rejected = sum(by_reason.values())
    return {
        "path": src.path,
        "format": src.format,
        "kind": src.kind,
        "licence": src.licence,
        "in": n_in,
        "out": n_out,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "blank_lines_skipped": blank,
        "empty": n_in == 0,
        "balanced": n_in == n_out + rejected,
    }


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    from pyspark.sql import functions as F

    for src in cfg.sources:
        _check_exists(src)
    spark = session(engines, spark)

    classified, blanks = [], {}
    for src in cfg.sources:
        reader = _read_jsonl if src.format == "jsonl" else _read_json_array
        parsed, blanks[src.name] = reader(spark, src)
        classified.append((src, _classify(parsed, src).cache()))

    good = bad = None
    for src, df in classified:
        g = _with_doc_id(df.where(F.col("_reason").isNull()))
        b = _rejects(df.where(F.col("_reason").isNotNull()), src)
        good = g if good is None else good.unionByName(g)
        bad = b if bad is None else bad.unionByName(b)
    n_in = {src.name: df.count() for src, df in classified}

    try:
        with atomic_path(cfg.output_dir) as out_tmp, atomic_path(cfg.rejects_dir) as rej_tmp:
            # Sorted and coalesced: same input -> same rows in the same order, in a handful of files.
            good.orderBy("doc_id").coalesce(cfg.output_files).write.parquet(spark_path(str(out_tmp)))
            bad.orderBy("source", "_pos", "reason").drop("_pos").coalesce(1).write.parquet(
                spark_path(str(rej_tmp))
            )
            # Count what was written, not what was planned: the equation checks the files downstream stages read.
            written = spark.read.parquet(spark_path(str(out_tmp)))
            out_counts = count_by(written, "source")
            rej_counts = count_by(spark.read.parquet(spark_path(str(rej_tmp))), "source", "reason")
            dup_ids = written.groupBy("doc_id").count().where("count > 1").count()

            sources, notes = {}, []
            for src in cfg.sources:
                by_reason = {reason: n for (name, reason), n in rej_counts.items() if name == src.name}
                n_out = out_counts.get((src.name,), 0)
                rep = _source_report(src, n_in[src.name], n_out, by_reason, blanks[src.name])
                sources[src.name] = rep
                if rep["empty"]:
                    notes.append(f"source '{src.name}' ({src.path}) has no records: 0 rows ingested")
            unbalanced = [n for n, r in sources.items() if not r["balanced"]]
            if unbalanced or dup_ids:
                raise StageFailed(
                    f"ingest accounting failed: in != out + rejected for {unbalanced or 'no source'}, "
                    f"{dup_ids} duplicated doc_id(s); nothing was written"
                )
    finally:  # cached per-source frames are released on success and failure alike
        for _, df in classified:
            df.unpersist()

    by_reason: dict[str, int] = {}
    for rep in sources.values():
        for reason, n in rep["rejected_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    total = {
        "in": sum(r["in"] for r in sources.values()),
        "out": sum(r["out"] for r in sources.values()),
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "by_kind": _by_kind(sources),
    }
    total["balanced"] = total["in"] == total["out"] + total["rejected"]
    report = {
        "stage": STAGE,
        "sources": sources,
        "total": total,
        "notes": notes,
        "output_dir": cfg.output_dir,
        "rejects_dir": cfg.rejects_dir,
    }
    write_json(cfg.metrics, report)
    return report


def _by_kind(sources: dict[str, dict]) -> dict[str, dict[str, int]]:
    kinds: dict[str, dict[str, int]] = {}
    for rep in sources.values():
        k = kinds.setdefault(rep["kind"], {"in": 0, "out": 0, "rejected": 0})
        for key in k:
            k[key] += rep[key]
    return dict(sorted(kinds.items()))

