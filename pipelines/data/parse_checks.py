"""Ingest's parse checks on Spark: which raw records are rejected before cleaning, and why.

Per record, in order (the first matching check wins): binary content, undecodable bytes (invalid UTF-8),
malformed JSON/CSV, missing mapped fields, empty text, a repeated source id (`fields.id`: the first occurrence by
file and position is kept). Rows that pass get their corpus columns (source, licence, kind, text, prompt,
response, title) from the source's field mapping; rows that fail keep only what the rejects table needs.
"""
from __future__ import annotations

from typing import Any

from pipelines.data.source_config import Source
from pipelines.data.sources import CORRUPT
from pipelines.schema import MAX_RAW_CHARS


def _stripped(name: str):
    """The field with surrounding whitespace removed, and null when nothing is left."""
    from pyspark.sql import functions as F

    value = F.regexp_replace(F.col(f"`{name}`"), r"^\s+|\s+$", "")
    return F.when(value != "", value)


def classify(df, src: Source, binary_ratio: float):
    """Add the corpus columns and `_reason`/`_rule` (null for a good row) to one source's parsed rows (the
    source id used for duplicate_id is dropped again)."""
    from pyspark.sql import functions as F

    fm = src.fields
    # Undecodable bytes reach Spark as an invalid UTF-8 string: flag it, and keep only a repaired copy (U+FFFD
    # for each bad sequence) so that nothing downstream (Arrow, Parquet readers) ever sees invalid UTF-8.
    df = df.withColumn("_utf8_ok", F.is_valid_utf8("_raw")).withColumn("_raw", F.make_valid_utf8("_raw"))
    raw_len = F.length("_raw")
    odd = raw_len - F.length(F.regexp_replace("_raw", "[\\x00-\\x08\\x0E-\\x1F\\uFFFD]", ""))
    binary = (F.instr("_raw", "\u0000") > 0) | (odd > F.lit(binary_ratio) * raw_len)
    what = {"jsonl": "JSON object", "json": "JSON array of objects", "csv": "CSV row with the header's columns",
            "parquet": "Parquet row", "text": "text file"}[src.format]
    malformed_reason = "malformed_csv" if src.format == "csv" else "malformed_json"
    checks: list[tuple[Any, str, str]] = [
        (binary, "binary_content", f"NUL bytes or over {binary_ratio:.0%} control/undecodable characters"),
        (~F.col("_utf8_ok"), "invalid_utf8", "bytes that are not valid UTF-8"),
        (F.col(CORRUPT).isNotNull(), malformed_reason, f"not a valid {what}"),
    ]
    rejected = F.lit(None).cast("string")
    if src.kind in ("instruction", "preference"):
        answer = fm.response if src.kind == "instruction" else fm.chosen  # a pair's chosen answer is its response
        parts = [_stripped(n) for n in fm.prompt or []]
        prompt = F.concat_ws("\n\n", *parts)
        prompt = F.when(prompt != "", prompt)
        response = _stripped(answer)
        text = F.lit(None).cast("string")  # built from the cleaned prompt and response
        all_prompt_absent = F.lit(True)
        for n in fm.prompt or []:
            all_prompt_absent = all_prompt_absent & F.col(f"`{n}`").isNull()
        checks += [
            (all_prompt_absent, "missing_field", f"prompt field(s) {', '.join(fm.prompt or [])} absent or null"),
            (F.col(f"`{answer}`").isNull(), "missing_field", f"response field '{answer}' absent or null"),
            (prompt.isNull(), "empty_text", "prompt is empty or whitespace only"),
            (response.isNull(), "empty_text", "response is empty or whitespace only"),
        ]
        if src.kind == "preference":
            rejected = _stripped(fm.rejected)
            checks += [
                (F.col(f"`{fm.rejected}`").isNull(), "missing_field", f"rejected field '{fm.rejected}' absent or null"),
                (rejected.isNull(), "empty_text", "rejected is empty or whitespace only"),
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
    out = df.select(
        "_file",
        "_pos",
        "_line",
        F.substring("_raw", 1, MAX_RAW_CHARS).alias("_raw"),  # only the rejects table needs it, truncated
        reason.alias("_reason"),
        rule.alias("_rule"),
        F.lit(None).cast("string").alias("_detail"),
        F.lit(src.name).alias("source"),
        F.lit(src.licence).alias("licence"),
        F.lit(src.kind).alias("kind"),
        # Field values only for rows that passed: a rejected row's fields may hold invalid UTF-8.
        F.when(reason.isNull(), text).alias("text"),
        F.when(reason.isNull(), prompt).alias("prompt"),
        F.when(reason.isNull(), response).alias("response"),
        F.when(reason.isNull(), rejected).alias("rejected"),
        F.when(reason.isNull(), title).alias("title"),
        F.when(reason.isNull(), F.col(f"`{fm.id}`") if fm.id else F.lit(None).cast("string")).alias("_id"),
    )
    return (_duplicate_ids(out) if fm.id else out).drop("_id")


def _duplicate_ids(df):
    """A source id seen before (by file, then position) is rejected; the first occurrence is kept."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    candidate = F.col("_reason").isNull() & F.col("_id").isNotNull()
    first = Window.partitionBy("_id", candidate.alias("_c")).orderBy("_file", "_pos")
    df = df.withColumn("_occ", F.row_number().over(first))
    dup = candidate & (F.col("_occ") > 1)
    return df.select(
        *[c for c in df.columns if c not in ("_reason", "_rule", "_occ")],
        F.when(dup, F.lit("duplicate_id")).otherwise(F.col("_reason")).alias("_reason"),
        F.when(dup, F.concat(F.lit("source id repeated (first occurrence kept): "), F.col("_id")))
        .otherwise(F.col("_rule")).alias("_rule"),
    )
