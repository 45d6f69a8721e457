"""The curated corpus as chunk rows: documents in doc_id order, cut by pipelines/embeddings/chunking.py, each chunk
with its content key for the embedding cache (pipelines/embeddings/cache.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.embeddings.cache import content_key
from pipelines.embeddings.chunking import chunk_id, chunk_texts
from pipelines.embeddings.encoder import max_seq_length
from pipelines.schema import read_corpus

if TYPE_CHECKING:
    import pandas as pd

DOCUMENT_COLUMNS = ["doc_id", "source", "text"]
CHUNK_ROW_COLUMNS = ("chunk_id", "doc_id", "source", "ordinal", "start", "end", "n_tokens", "text", "key")
SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every chunk the model encodes


def check_fits_model(model_dir: str | Path, max_tokens: int) -> None:
    """Refuse a chunk size the model would truncate: `max_tokens` pieces plus the special tokens must fit."""
    limit = max_seq_length(model_dir)
    if limit is not None and max_tokens + SPECIAL_TOKENS > limit:
        raise ValueError(f"embed.chunking.max_tokens={max_tokens} + {SPECIAL_TOKENS} special tokens exceeds the "
                         f"model's max_seq_length {limit}: chunks would be truncated")


def read_documents(input_dir: str) -> "pd.DataFrame":
    """doc_id, source, text of every curated document, sorted by doc_id (the chunk and index row order)."""
    df = read_corpus(input_dir, columns=DOCUMENT_COLUMNS).sort_values("doc_id", kind="stable").reset_index(drop=True)
    if df.empty:
        raise ValueError(f"embed: no documents in {input_dir}")
    if df["doc_id"].duplicated().any():
        raise ValueError("embed: duplicated doc_id in the corpus (the validate stage should have stopped this)")
    return df


def chunk_corpus(df: "pd.DataFrame", tokenizer: Any, max_tokens: int, overlap_tokens: int,
                 fingerprint: str) -> dict[str, list]:
    """Column lists (CHUNK_ROW_COLUMNS) of every chunk, in (doc_id, ordinal) order, with each chunk's content key
    sha256(model fingerprint + chunk text)."""
    cols: dict[str, list] = {c: [] for c in CHUNK_ROW_COLUMNS}
    per_doc = chunk_texts(tokenizer, df["text"].astype(str).tolist(), max_tokens, overlap_tokens)
    for doc_id, source, chunks in zip(df["doc_id"], df["source"], per_doc):
        for ch in chunks:
            cols["chunk_id"].append(chunk_id(doc_id, ch.ordinal))
            cols["doc_id"].append(str(doc_id))
            cols["source"].append(str(source))
            cols["ordinal"].append(ch.ordinal)
            cols["start"].append(ch.start)
            cols["end"].append(ch.end)
            cols["n_tokens"].append(ch.n_tokens)
            cols["text"].append(ch.text)
            cols["key"].append(content_key(fingerprint, ch.text))
    return cols
