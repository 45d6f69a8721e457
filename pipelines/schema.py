"""The tables the stages hand to each other: one definition of the corpus and of the rejects table.

Every stage that writes the corpus writes exactly these columns; every stage that reads it checks them. The Spark
DDL (ingest, dedup) and the Arrow schema (writers outside Spark: tests, samples) are both derived from
`CORPUS_FIELDS`, so they cannot disagree.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Curated corpus: one row per document or instruction pair (ingest -> dedup -> validate/split/embed).
# (column, Spark SQL type). Order is informative only: Spark may reorder columns on write.
CORPUS_FIELDS: tuple[tuple[str, str], ...] = (
    ("doc_id", "string"),
    ("source", "string"),
    ("licence", "string"),
    ("kind", "string"),
    ("text", "string"),
    ("prompt", "string"),
    ("response", "string"),   # an instruction's answer; a preference pair's CHOSEN answer
    ("rejected", "string"),   # a preference pair's rejected answer; null for instruction and document rows
    ("title", "string"),
    ("n_chars", "int"),
)


def _columns(fields: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(name for name, _ in fields)


def _ddl(fields: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in fields)


CORPUS_COLUMNS: tuple[str, ...] = _columns(CORPUS_FIELDS)
CORPUS_DDL = _ddl(CORPUS_FIELDS)
REQUIRED_NON_NULL: tuple[str, ...] = ("doc_id", "source", "licence", "text")
KINDS: tuple[str, ...] = ("instruction", "document", "preference")
PAIR_KINDS: tuple[str, ...] = ("instruction", "preference")  # rows with prompt + response (text built from them)

# Rejects: every record a stage drops, with why. `line` is the 1-based line of a JSONL source (null otherwise).
REJECT_FIELDS: tuple[tuple[str, str], ...] = (
    ("source", "string"),
    ("path", "string"),
    ("line", "long"),
    ("raw", "string"),
    ("reason", "string"),
    ("rule", "string"),
    ("stage", "string"),
)
REJECT_COLUMNS: tuple[str, ...] = _columns(REJECT_FIELDS)
REJECT_DDL = _ddl(REJECT_FIELDS)
MAX_RAW_CHARS = 2000  # a rejected record's raw text is kept up to this many characters


def corpus_schema():
    """The Arrow schema of the corpus, for writers outside Spark: all-null columns keep their type."""
    import pyarrow as pa

    arrow = {"string": pa.string(), "int": pa.int32(), "long": pa.int64()}
    return pa.schema([(name, arrow[kind]) for name, kind in CORPUS_FIELDS])


def read_corpus(path: str | Path, columns: list[str] | None = None) -> "pd.DataFrame":
    """Read a Parquet file or a Spark-written directory of part files (pyarrow skips _SUCCESS and .crc files)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (run the upstream stages first: `dvc repro dedup`)")
    return pd.read_parquet(path, columns=columns, engine="pyarrow")
