"""The curated corpus contract shared by every stage that reads it (validate, split, embed)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

# Fixed schema written by the dedup stage (Spark). Order is informative only: Spark may reorder on write.
CORPUS_COLUMNS: tuple[str, ...] = (
    "doc_id",
    "source",
    "licence",
    "kind",
    "text",
    "prompt",
    "response",
    "title",
    "n_chars",
)
REQUIRED_NON_NULL: tuple[str, ...] = ("doc_id", "source", "licence", "text")
KINDS: tuple[str, ...] = ("instruction", "document")


def corpus_schema():
    """The Arrow schema of the corpus, for writers outside Spark (tests, samples): all-null columns keep their type."""
    import pyarrow as pa

    types = {"n_chars": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in CORPUS_COLUMNS])


def read_corpus(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file or a Spark-written directory of part files (pyarrow skips _SUCCESS and .crc files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (run the upstream stages first: `dvc repro dedup`)")
    return pd.read_parquet(path, columns=columns, engine="pyarrow")
