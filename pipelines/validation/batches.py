"""Batches that a validate stage builds in pandas before the gate runs, instead of reading one table as is.

- `splits_frame`: the union of the split files with a `split` column (validate_splits);
- `vector_frame`: one row per stored chunk with derived columns (validate_embeddings). chunks.parquet holds
  list<float32> columns, which GX's built-ins do not inspect, so the checks are computed here and the suite checks
  them with built-in expectations. It lives in validation, not in the stage, because it *is* the suite's meaning
  (what `span_ok` or `in_index` says); the stage only wires it to the gate.

Light: no GX import.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence, TypedDict

from pipelines.schema import read_corpus

if TYPE_CHECKING:
    import pandas as pd


def splits_frame(split_dir: str, splits: Sequence[str]) -> "pd.DataFrame":
    """doc_id, source, text of every split file `<split_dir>/<split>.parquet`, plus the split's name."""
    import pandas as pd

    files = {s: Path(split_dir) / f"{s}.parquet" for s in splits}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"validate_splits: {', '.join(missing)} missing; run the split stage first")
    return pd.concat(
        [pd.read_parquet(p, columns=["doc_id", "source", "text"]).assign(split=s) for s, p in files.items()],
        ignore_index=True,
    )


class EmbeddingSuiteParameters(TypedDict):
    """The embeddings suite's `$PARAMETER`s, bound at run time so the committed suite stays byte-stable."""

    expected_documents: int  # curated documents: each must have at least one chunk
    index_rows: int  # vectors in the index (entries of index_ids.json)


class VectorFrame(NamedTuple):
    frame: "pd.DataFrame"  # one row per chunk: chunk_id, doc_id, dim, norm, finite, in_corpus, span_ok, in_index
    parameters: EmbeddingSuiteParameters


def vector_frame(embeddings_dir: str, corpus_dir: str) -> VectorFrame:
    """One row per stored chunk with the derived columns the suite checks; plus the suite parameters."""
    import numpy as np
    import pandas as pd

    from pipelines.embeddings.index import CHUNKS, IDS  # pyarrow, numpy: only when the stage runs

    root = Path(embeddings_dir)
    if not (root / CHUNKS).exists():
        raise FileNotFoundError(f"validate_embeddings: {root / CHUNKS} missing; run embed first")
    chunks = pd.read_parquet(root / CHUNKS, columns=["chunk_id", "doc_id", "start", "end", "text", "vector"])
    ids_path = root / IDS
    index_ids = json.loads(ids_path.read_text()) if ids_path.exists() else []
    corpus = read_corpus(corpus_dir, columns=["doc_id", "text"])
    doc_text = dict(zip(corpus["doc_id"], corpus["text"]))
    dims, norms, finite, span_ok = [], [], [], []
    for v, doc_id, start, end, text in zip(chunks["vector"], chunks["doc_id"], chunks["start"], chunks["end"],
                                          chunks["text"]):
        a = np.asarray(v if v is not None else [], dtype=np.float64)
        dims.append(int(a.size))
        ok = bool(a.size) and bool(np.isfinite(a).all())
        finite.append(ok)
        norms.append(float(np.linalg.norm(a)) if ok else float("nan"))
        doc = doc_text.get(doc_id)
        span_ok.append(doc is not None and doc[int(start):int(end)] == text)
    position = {c: i for i, c in enumerate(index_ids)}
    df = pd.DataFrame({
        "chunk_id": chunks["chunk_id"],
        "doc_id": chunks["doc_id"],
        "dim": dims,
        "norm": norms,
        "finite": finite,
        "in_corpus": chunks["doc_id"].isin(doc_text.keys()),
        "span_ok": span_ok,
        # in the index at its own row: row i of chunks.parquet is vector i of the FAISS index
        "in_index": [position.get(c) == i for i, c in enumerate(chunks["chunk_id"])],
    })
    return VectorFrame(df, {"expected_documents": len(doc_text), "index_rows": len(index_ids)})
