"""Ingest's accounting: nothing is lost, and metrics/ingest.json says where every record went.

The cleaned rows (one cached frame) give what came in and why records were rejected; the written tables, read
back, give what was kept and rejected. The stage refuses to finish unless `in == out + rejected` holds for every
source on what was actually written, and doc_id is a key of the written corpus (`check_written`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypedDict

from pipelines.data.source_config import Source
from pipelines.engines.spark import count_by, spark_path
from pipelines.errors import StageFailed

KindCounts = TypedDict("KindCounts", {"in": int, "out": int, "rejected": int})


class PiiReport(TypedDict):
    policy: str | dict[str, str]
    spans_found: dict[str, int]   # entity -> spans in what was kept and in what the drop policy rejected
    docs_with_pii: int
    redacted: dict[str, int]      # spans_found of the entities the policy redacts (or pseudonymizes)
    not_scanned: int              # records the English NER was needed for but not run on (another language)


SourceReport = TypedDict("SourceReport", {
    "path": str,
    "format": str,
    "kind": str,
    "licence": str,
    "pii_policy": str | dict[str, str],
    "in": int,
    "out": int,
    "rejected": int,
    "rejected_by_reason": dict[str, int],
    "blank_lines_skipped": int,
    "empty": bool,
    "balanced": bool,
    "rejected_by_rule": dict[str, dict[str, int]],  # reason -> rule -> rejects
    "pii": PiiReport,
    "languages": dict[str, int],
    "normalized_changed": int,
})

TotalReport = TypedDict("TotalReport", {
    "in": int,
    "out": int,
    "rejected": int,
    "rejected_by_reason": dict[str, int],
    "rejected_by_rule": dict[str, dict[str, int]],
    "pii_redacted": dict[str, int],
    "pii_spans_found": dict[str, int],
    "pii_not_scanned": int,
    "languages": dict[str, int],
    "normalized_changed": int,
    "by_kind": dict[str, KindCounts],
    "balanced": bool,
})


@dataclass(frozen=True)
class CleanedCounts:
    """Counts over the cleaned rows, before anything is written. Keys are tuples, as `count_by` returns them."""

    n_in: dict[tuple, int]              # (source,) -> records read
    rejected_by_rule: dict[tuple, int]  # (source, reason, rule) -> rejects
    pii_spans: dict[tuple, int]         # (source, entity) -> spans found in kept and pii-dropped rows
    pii_docs: dict[tuple, int]          # (source,) -> those rows holding at least one span
    languages: dict[tuple, int]         # (source, lang) -> kept records
    normalized_changed: dict[tuple, int]  # (source,) -> kept records that normalization altered
    pii_unscanned: dict[tuple, int]     # (source,) -> kept or pii-dropped records NER was needed for, not run on


@dataclass(frozen=True)
class WrittenCounts:
    """Counts over the written tables, read back: the files downstream stages read."""

    out: dict[tuple, int]                 # (source,) -> corpus rows
    rejected_by_reason: dict[tuple, int]  # (source, reason) -> rejects table rows
    duplicate_doc_ids: int                # doc ids held by more than one corpus row


def count_cleaned(cleaned) -> CleanedCounts:
    from pyspark.sql import functions as F

    # One pass for the rejects by rule (and `in`), one for PII spans, one for what was kept.
    by_rule = count_by(cleaned, "source", "_reason", "_rule")
    n_in: dict[tuple, int] = {}
    for (name, _, _), n in by_rule.items():
        n_in[(name,)] = n_in.get((name,), 0) + n
    by_rule = {k: n for k, n in by_rule.items() if k[1] is not None}
    # PII spans found in what was kept (redacted or kept as is) and in what the drop policy rejected.
    judged = cleaned.where(F.col("_reason").isNull() | (F.col("_reason") == "pii"))
    pii_rows = judged.select("source", F.explode("_pii").alias("entity"), F.col("_pos"), F.col("_file"))
    pii_counts = count_by(pii_rows, "source", "entity")
    pii_docs = count_by(pii_rows.select("source", "_file", "_pos").distinct(), "source")
    unscanned = count_by(judged.where(F.col("_pii_unscanned")), "source")
    kept_stats = count_by(cleaned.where(F.col("_reason").isNull()), "source", "_lang", "_changed")
    langs: dict[tuple, int] = {}
    changed: dict[tuple, int] = {}
    for (name, lang, was_changed), n in kept_stats.items():
        langs[(name, lang)] = langs.get((name, lang), 0) + n
        if was_changed:
            changed[(name,)] = changed.get((name,), 0) + n
    return CleanedCounts(n_in, by_rule, pii_counts, pii_docs, langs, changed, unscanned)


def count_written(spark, corpus_dir: Path, rejects_dir: Path) -> WrittenCounts:
    written = spark.read.parquet(spark_path(str(corpus_dir)))
    return WrittenCounts(
        out=count_by(written, "source"),
        rejected_by_reason=count_by(spark.read.parquet(spark_path(str(rejects_dir))), "source", "reason"),
        duplicate_doc_ids=written.groupBy("doc_id").count().where("count > 1").count(),
    )


def _rejected(written: WrittenCounts, name: str) -> int:
    return sum(n for (source, _), n in written.rejected_by_reason.items() if source == name)


def check_written(names: Sequence[str], cleaned: CleanedCounts, written: WrittenCounts) -> None:
    """StageFailed unless in == out + rejected for every source and doc_id is unique in what was written. Called
    inside the atomic write, so that a failed check leaves the previous outputs in place."""
    unbalanced = [name for name in names
                  if cleaned.n_in.get((name,), 0) != written.out.get((name,), 0) + _rejected(written, name)]
    if unbalanced or written.duplicate_doc_ids:
        raise StageFailed(
            f"ingest accounting failed: in != out + rejected for {unbalanced or 'no source'}, "
            f"{written.duplicate_doc_ids} duplicated doc_id(s); nothing was written"
        )


# --- metrics/ingest.json -------------------------------------------------------------------------------------


def _nested(counts: Mapping[tuple, int], name: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (src, reason, rule), n in sorted(counts.items()):
        if src == name:
            out.setdefault(reason, {})[rule] = n
    return out


def source_report(src: Source, cleaned: CleanedCounts, written: WrittenCounts, blank_lines: int) -> SourceReport:
    n_in = cleaned.n_in.get((src.name,), 0)
    n_out = written.out.get((src.name,), 0)
    by_reason = {reason: n for (name, reason), n in written.rejected_by_reason.items() if name == src.name}
    rejected = sum(by_reason.values())
    spans = {e: n for (name, e), n in sorted(cleaned.pii_spans.items()) if name == src.name}
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
        "blank_lines_skipped": blank_lines,
        "empty": n_in == 0,
        "balanced": n_in == n_out + rejected,
        "rejected_by_rule": _nested(cleaned.rejected_by_rule, src.name),
        "pii": {
            "policy": src.pii,
            "spans_found": spans,
            "docs_with_pii": cleaned.pii_docs.get((src.name,), 0),
            "redacted": {e: n for e, n in spans.items()
                         if src.pii_actions([e])[e] in ("redact", "pseudonymize")},
            "not_scanned": cleaned.pii_unscanned.get((src.name,), 0),
        },
        "languages": {lang: n for (name, lang), n in sorted(cleaned.languages.items()) if name == src.name},
        "normalized_changed": cleaned.normalized_changed.get((src.name,), 0),
    }


def empty_source_notes(sources: Mapping[str, SourceReport]) -> list[str]:
    return [f"source '{name}' ({rep['path']}) has no records: 0 rows ingested"
            for name, rep in sources.items() if rep["empty"]]


def _sum_dicts(dicts: Iterable[Mapping]) -> dict:
    total: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                total[k] = _sum_dicts([total.get(k, {}), v])
            else:
                total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def _by_kind(sources: Mapping[str, SourceReport]) -> dict[str, KindCounts]:
    kinds: dict[str, KindCounts] = {}
    for rep in sources.values():
        k = kinds.setdefault(rep["kind"], {"in": 0, "out": 0, "rejected": 0})
        for key in k:
            k[key] += rep[key]
    return dict(sorted(kinds.items()))


def total_report(sources: Mapping[str, SourceReport]) -> TotalReport:
    reps = list(sources.values())
    by_reason = _sum_dicts(r["rejected_by_reason"] for r in reps)
    n_in, n_out, rejected = sum(r["in"] for r in reps), sum(r["out"] for r in reps), sum(by_reason.values())
    return {
        "in": n_in,
        "out": n_out,
        "rejected": rejected,
        "rejected_by_reason": by_reason,
        "rejected_by_rule": _sum_dicts(r["rejected_by_rule"] for r in reps),
        "pii_redacted": _sum_dicts(r["pii"]["redacted"] for r in reps),
        "pii_spans_found": _sum_dicts(r["pii"]["spans_found"] for r in reps),
        "pii_not_scanned": sum(r["pii"]["not_scanned"] for r in reps),
        "languages": _sum_dicts(r["languages"] for r in reps),
        "normalized_changed": sum(r["normalized_changed"] for r in reps),
        "by_kind": _by_kind(sources),
        "balanced": n_in == n_out + rejected,
    }
