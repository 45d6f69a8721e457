"""ingest: read the declared raw sources with Spark, clean them and write one corpus table with a fixed schema.

Sources (`params.yaml` ingest.sources) are JSONL (also gzipped), JSON arrays, CSV, Parquet or plain-text folders,
local or `s3://`, each with a field mapping, a licence and a PII policy (`redact | drop | keep`); a source without
a licence or a PII policy is refused before anything runs. Per record, in order:

1. parse checks (Spark): binary content, undecodable bytes (invalid UTF-8), malformed JSON/CSV, missing mapped
   fields, empty text, a repeated source id (`fields.id`: the first occurrence by file and position is kept);
2. cleaning (a pandas UDF running `pipelines.data.clean`): NFKC / control characters / whitespace normalization,
   Gopher/C4-style quality rules (`quality`, each rule counted by name), offline language identification
   (`language`), PII detection with validators and the source's policy (typed placeholders such as `<EMAIL>`).

Nothing is lost: every dropped record goes to the rejects table with its reason and rule, and the stage refuses
to finish unless `in == out + rejected` holds for every source (counted on what was actually written). Output is
sorted and content-addressed (doc_id = sha256 of source + cleaned content), so a rerun writes the same rows.
"""
from __future__ import annotations

import glob
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipelines.config import StageConfig
from pipelines.data import pii as pii_mod
from pipelines.data.clean import RULE_NAMES, Language, Normalize, QualityRules
from pipelines.schema import CORPUS_COLUMNS, MAX_RAW_CHARS
from pipelines.data.sources import CORRUPT, READERS, TEXT_FIELDS, stage_s3
from pipelines.engines.spark import count_by, session, spark_path
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_path, write_json
from pipelines.errors import StageFailed

SECTION = "ingest"
STAGE = "ingest"
_CORRUPT = CORRUPT
# Separates the parts hashed into doc_id, so ("ab", "c") and ("a", "bc") never collide.
_SEP = "\u001f"
PII_POLICIES = ("redact", "drop", "keep")
SKIPPABLE = (*RULE_NAMES, "language")


class FieldMap(StageConfig):
    """Which raw field feeds which corpus column. `prompt` may list several fields, joined by a blank line.
    `id`, when set, names the source's own record id: a repeated id is rejected as duplicate_id."""

    prompt: list[str] | None = None
    response: str | None = None
    text: str | None = None
    title: str | None = None
    id: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def raw_fields(self) -> list[str]:
        names = [*(self.prompt or []), self.response, self.text, self.title, self.id]
        return list(dict.fromkeys(n for n in names if n))


def _required_choice(value: str | None, info: ValidationInfo, what: str, hint: str) -> str:
    if value is None or not str(value).strip():
        name = info.data.get("name", "?")
        raise ValueError(f"source '{name}' declares no {what}; every source must name its {what} ({hint}) "
                         "before it can be ingested")
    return str(value).strip()


class Source(StageConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str                     # file, directory or glob; local or s3://bucket/key-or-prefix
    format: Literal["json", "jsonl", "csv", "parquet", "text"]
    kind: Literal["instruction", "document"]
    # Required: data whose licence nobody wrote down does not enter the corpus (None only to give a clear message).
    licence: str | None = Field(default=None, validate_default=True)
    # Required too: what to do with personal data found in this source (None only to give a clear message).
    pii: str | None = Field(default=None, validate_default=True)
    fields: FieldMap | None = None  # `text` sources default to {text: text}; their raw fields are text and file
    skip_rules: list[str] = []    # quality rules (or "language") not applied to this source, e.g. for code

    @field_validator("licence")
    @classmethod
    def _licence_declared(cls, value: str | None, info: ValidationInfo) -> str:
        return _required_choice(value, info, "licence", "an SPDX id such as MIT or CC-BY-SA-4.0")

    @field_validator("pii")
    @classmethod
    def _pii_declared(cls, value: str | None, info: ValidationInfo) -> str:
        value = _required_choice(value, info, "PII policy", "pii: redact, drop or keep")
        if value not in PII_POLICIES:
            raise ValueError(f"source '{info.data.get('name', '?')}': pii must be one of {', '.join(PII_POLICIES)}, "
                             f"not {value!r}")
        return value

    @field_validator("skip_rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in SKIPPABLE]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; known: {', '.join(SKIPPABLE)}")
        return value

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "Source":
        if self.format == "text":
            if self.kind != "document":
                raise ValueError(f"source '{self.name}': a text folder holds documents (kind: document)")
            fields = self.fields or FieldMap(text="text")
            bad = [n for n in fields.raw_fields() if n not in TEXT_FIELDS]
            if bad:
                raise ValueError(f"source '{self.name}': a text source offers fields {TEXT_FIELDS}, not {bad}")
            object.__setattr__(self, "fields", fields)
        if self.fields is None:
            raise ValueError(f"source '{self.name}' must declare `fields` (which raw field feeds which column)")
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
    normalize: Normalize = Normalize()
    language: Language = Language()          # default: identify and report, drop nothing
    quality: QualityRules = QualityRules()   # default: every rule off; params.yaml sets the corpus's values
    pii_entities: list[str] = list(pii_mod.ENTITIES)  # detectors run on every source; [] turns detection off
    binary_control_ratio: float = Field(0.1, gt=0, le=1)  # control/undecodable chars above it: binary_content
    staging_dir: str | None = None  # where s3:// sources are copied; null: a temp dir removed after the run

    @field_validator("pii_entities")
    @classmethod
    def _known_entities(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in pii_mod.ENTITIES]
        if unknown:
            raise ValueError(f"unknown PII entity type(s) {unknown}; known: {', '.join(pii_mod.ENTITIES)}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self


# --- reading -------------------------------------------------------------------------------------------------


def _check_exists(src: Source) -> None:
    if "://" not in src.path and not glob.glob(src.path):
        raise FileNotFoundError(f"ingest source '{src.name}': {src.path} does not exist")


def _local_path(src: Source, staging: Path) -> Path:
    if src.path.startswith("s3://"):
        return stage_s3(src.path, staging, src.name)
    if "://" in src.path:
        raise ValueError(f"ingest source '{src.name}': only local paths and s3:// URIs are read, not {src.path}")
    return Path(src.path)


# --- classifying ---------------------------------------------------------------------------------------------


def _stripped(name: str):
    """The field with surrounding whitespace removed, and null when nothing is left."""
    from pyspark.sql import functions as F

    value = F.regexp_replace(F.col(f"`{name}`"), r"^\s+|\s+$", "")
    return F.when(value != "", value)


def _classify(df, src: Source, binary_ratio: float):
    """Add the corpus columns and `_reason`/`_rule` (null for a good row) to one source's parsed rows."""
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
        (F.col(_CORRUPT).isNotNull(), malformed_reason, f"not a valid {what}"),
    ]
    if src.kind == "instruction":
        parts = [_stripped(n) for n in fm.prompt or []]
        prompt = F.concat_ws("\n\n", *parts)
        prompt = F.when(prompt != "", prompt)
        response = _stripped(fm.response)
        text = F.lit(None).cast("string")  # built from the cleaned prompt and response
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
        F.when(reason.isNull(), title).alias("title"),
        F.when(reason.isNull(), F.col(f"`{fm.id}`") if fm.id else F.lit(None).cast("string")).alias("_id"),
    )
    return _duplicate_ids(out) if fm.id else out


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


_CLEAN_DDL = (
    "_file string, _pos long, _line long, _raw string, _reason string, _rule string, _detail string, "
    "source string, licence string, kind string, text string, prompt string, response string, title string, "
    "_lang string, _lang_prob double, _pii array<string>, _changed boolean"
)


def _cleaned(df, cfg: Config):
    """Run normalization, quality rules, language id and each source's PII policy on the rows that passed parsing
    (one pandas UDF over every source; rows already rejected pass through untouched).

    The function shipped to the executors imports `pipelines.data.clean` there. local[*] and a standalone worker
    started from this virtualenv run the project interpreter (PYSPARK_PYTHON) with the package installed, so that
    works as is; a remote cluster needs the package shipped too (an installed wheel, or `spark.submit.pyFiles`).
    """
    base = {
        "normalize": cfg.normalize.model_dump(),
        "language": cfg.language.model_dump(),
        "quality": cfg.quality.model_dump(),
        "pii_entities": list(cfg.pii_entities),
    }
    per_source = {s.name: (s.kind, s.pii, {**base, "skip_rules": list(s.skip_rules)}) for s in cfg.sources}
    out_cols = [c.split()[0] for c in _CLEAN_DDL.split(", ")]
    fields = ("prompt", "response", "text", "title")

    def clean_batches(batches):
        import pandas as pd

        from pipelines.data.clean import make_cleaner

        cleaners: dict = {}
        for pdf in batches:
            rows = []
            for rec in pdf.to_dict("records"):
                rec = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}  # NaN -> None
                if rec["_reason"] is None:
                    name = rec["source"]
                    if name not in cleaners:
                        kind, policy, opts = per_source[name]
                        cleaners[name] = make_cleaner(kind=kind, pii_policy=policy, opts=opts)
                    res = cleaners[name]({k: rec[k] for k in fields})
                    rec.update({k: res[k] for k in fields})
                    rec.update(_reason=res["reason"], _rule=res["rule"], _detail=res["detail"] or None,
                               _lang=res["lang"], _lang_prob=float(res["lang_prob"]), _pii=res["pii"],
                               _changed=bool(res["changed"]))
                else:
                    rec.update(_lang=None, _lang_prob=None, _pii=[], _changed=False)
                rows.append({c: rec.get(c) for c in out_cols})
            yield pd.DataFrame(rows, columns=out_cols)

    return df.mapInPandas(clean_batches, _CLEAN_DDL)


def _with_doc_id(good):
    """sha256 of source + canonical content, so reruns give the same ids. A record repeated verbatim within a
    source gets its occurrence number hashed in as well: doc_id stays a key, and dedup still sees the repeat."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parts = [F.col(c) for c in ("source", "kind")] + [
        F.coalesce(F.col(c), F.lit("")) for c in ("prompt", "response", "title", "text")
    ]
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


def _rejects(bad):
    from pyspark.sql import functions as F

    rule = F.when(F.col("_detail").isNotNull(), F.concat_ws(": ", "_rule", "_detail")).otherwise(F.col("_rule"))
    return bad.select(
        "source",
        F.col("_file").alias("path"),
        F.col("_line").alias("line"),
        F.col("_raw").alias("raw"),
        F.col("_reason").alias("reason"),
        rule.alias("rule"),
        F.lit(STAGE).alias("stage"),
        F.col("_file"),
        F.col("_pos"),
    )


# --- accounting ----------------------------------------------------------------------------------------------


def _nested(counts: dict[tuple, int], name: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (src, reason, rule), n in sorted(counts.items()):
        if src == name:
            out.setdefault(reason, {})[rule] = n
    return out


def _source_report(src: Source, n_in: int, n_out: int, by_reason: dict[str, int], blank: int) -> dict:
    rejected = sum(by_reason.values())
    return {
        "path": src.path,
        "format": src.format,
        "kind": src.kind,
        "licence": src.licence,
        "pii_policy": src.pii,
        "in": n_in,
        "out": n_out,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "blank_lines_skipped": blank,
        "empty": n_in == 0,
        "balanced": n_in == n_out + rejected,
    }


def _sum_dicts(dicts) -> dict:
    total: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                total[k] = _sum_dicts([total.get(k, {}), v])
            else:
                total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    for src in cfg.sources:
        _check_exists(src)
    spark = session(engines, spark)

    staging_tmp = None
    if cfg.staging_dir:
        staging = Path(cfg.staging_dir)
    else:
        staging = staging_tmp = Path(tempfile.mkdtemp(prefix="llmops-ingest-staging-"))
    frames, blanks, notes = [], {}, []
    try:
        for src in cfg.sources:
            raw = READERS[src.format](spark, src, _local_path(src, staging))
            blanks[src.name] = raw.blank_lines
            notes += raw.notes
            frames.append(_classify(raw.df, src, cfg.binary_control_ratio).drop("_id"))
        parsed = frames[0]
        for df in frames[1:]:
            parsed = parsed.unionByName(df)
        everything = _cleaned(parsed, cfg)
        # The UDF runs once: good rows, rejects and every count below read this cache.
        everything = everything.cache()
        try:
            report_parts = _write_and_count(spark, cfg, everything)
        finally:  # released on success and failure alike
            everything.unpersist()
    finally:
        if staging_tmp is not None:
            shutil.rmtree(staging_tmp, ignore_errors=True)

    n_in, out_counts, rej_counts, by_rule, pii_counts, pii_docs, langs, changed = report_parts
    sources = {}
    for src in cfg.sources:
        by_reason = {reason: n for (name, reason), n in rej_counts.items() if name == src.name}
        rep = _source_report(src, n_in.get((src.name,), 0), out_counts.get((src.name,), 0), by_reason,
                             blanks[src.name])
        spans = {e: n for (name, e), n in sorted(pii_counts.items()) if name == src.name}
        rep["rejected_by_rule"] = _nested(by_rule, src.name)
        rep["pii"] = {
            "policy": src.pii,
            "spans_found": spans,
            "docs_with_pii": pii_docs.get((src.name,), 0),
            "redacted": spans if src.pii == "redact" else {},
        }
        rep["languages"] = {lang: n for (name, lang), n in sorted(langs.items()) if name == src.name}
        rep["normalized_changed"] = changed.get((src.name,), 0)
        sources[src.name] = rep
        if rep["empty"]:
            notes.append(f"source '{src.name}' ({src.path}) has no records: 0 rows ingested")
    unbalanced = [n for n, r in sources.items() if not r["balanced"]]
    if unbalanced:  # cannot happen unless a write lost rows; the files are already in place, so say so loudly
        raise StageFailed(f"ingest accounting failed: in != out + rejected for {unbalanced}")

    by_reason = _sum_dicts(r["rejected_by_reason"] for r in sources.values())
    total = {
        "in": sum(r["in"] for r in sources.values()),
        "out": sum(r["out"] for r in sources.values()),
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "rejected_by_rule": _sum_dicts(r["rejected_by_rule"] for r in sources.values()),
        "pii_redacted": _sum_dicts(r["pii"]["redacted"] for r in sources.values()),
        "pii_spans_found": _sum_dicts(r["pii"]["spans_found"] for r in sources.values()),
        "languages": _sum_dicts(r["languages"] for r in sources.values()),
        "normalized_changed": sum(r["normalized_changed"] for r in sources.values()),
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


def _write_and_count(spark, cfg: Config, everything):
    from pyspark.sql import functions as F

    good = _with_doc_id(everything.where(F.col("_reason").isNull()))
    bad = _rejects(everything.where(F.col("_reason").isNotNull()))
    # One pass for the rejects by rule (and `in`), one for PII spans, one for what was kept.
    by_rule = count_by(everything, "source", "_reason", "_rule")
    n_in: dict[tuple, int] = {}
    for (name, _, _), n in by_rule.items():
        n_in[(name,)] = n_in.get((name,), 0) + n
    by_rule = {k: n for k, n in by_rule.items() if k[1] is not None}
    # PII spans found in what was kept (redacted or kept as is) and in what the drop policy rejected.
    judged = everything.where(F.col("_reason").isNull() | (F.col("_reason") == "pii"))
    pii_rows = judged.select("source", F.explode("_pii").alias("entity"), F.col("_pos"), F.col("_file"))
    pii_counts = count_by(pii_rows, "source", "entity")
    pii_docs = count_by(pii_rows.select("source", "_file", "_pos").distinct(), "source")
    kept_stats = count_by(everything.where(F.col("_reason").isNull()), "source", "_lang", "_changed")
    langs: dict[tuple, int] = {}
    changed: dict[tuple, int] = {}
    for (name, lang, was_changed), n in kept_stats.items():
        langs[(name, lang)] = langs.get((name, lang), 0) + n
        if was_changed:
            changed[(name,)] = changed.get((name,), 0) + n
    with atomic_path(cfg.output_dir) as out_tmp, atomic_path(cfg.rejects_dir) as rej_tmp:
        # Sorted and coalesced: same input -> same rows in the same order, in a handful of files.
        good.orderBy("doc_id").coalesce(cfg.output_files).write.parquet(spark_path(str(out_tmp)))
        bad.orderBy("source", "_file", "_pos", "reason").drop("_file", "_pos").coalesce(1).write.parquet(
            spark_path(str(rej_tmp))
        )
        # Count what was written, not what was planned: the equation checks the files downstream stages read.
        written = spark.read.parquet(spark_path(str(out_tmp)))
        out_counts = count_by(written, "source")
        rej_counts = count_by(spark.read.parquet(spark_path(str(rej_tmp))), "source", "reason")
        dup_ids = written.groupBy("doc_id").count().where("count > 1").count()
        unbalanced = [name for (name,), n in n_in.items()
                      if n != out_counts.get((name,), 0) + sum(v for (s, _), v in rej_counts.items() if s == name)]
        if unbalanced or dup_ids:
            raise StageFailed(
                f"ingest accounting failed: in != out + rejected for {unbalanced or 'no source'}, "
                f"{dup_ids} duplicated doc_id(s); nothing was written"
            )
    return n_in, out_counts, rej_counts, by_rule, pii_counts, pii_docs, langs, changed


def _by_kind(sources: dict[str, dict]) -> dict[str, dict[str, int]]:
    kinds: dict[str, dict[str, int]] = {}
    for rep in sources.values():
        k = kinds.setdefault(rep["kind"], {"in": 0, "out": 0, "rejected": 0})
        for key in k:
            k[key] += rep[key]
    return dict(sorted(kinds.items()))
