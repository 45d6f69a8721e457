"""validate_embeddings: the chunk vectors must have the model's dimension, finite values and unit norms; every
curated document must have at least one chunk, every chunk must belong to a curated document and map back to its
text (`text == document[start:end]`), chunk ids must be unique, and every chunk must be in the FAISS index at its row.

chunks.parquet holds list<float32> columns, which GX's built-ins do not inspect; the loader derives one row per
chunk (`dim`, `norm`, `finite`, `in_corpus`, `span_ok`, `in_index`) and the suite checks those with built-in
expectations. The corpus size and the index size are GX suite parameters (`$PARAMETER: expected_documents`,
`index_rows`), bound at run time, so the committed suite stays byte-stable while the corpus grows.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.engines.config import EnginesConfig
from pipelines.validation.context import GxConfig
from pipelines.validation.suites import load_frame, with_severity
from pipelines.schema import read_corpus

SECTION = "validate_embeddings"


class Config(StageConfig):
    embeddings_dir: str = "data/embeddings"
    corpus_dir: str = "data/curated/corpus"
    suite: str = "embeddings"
    engine: str = Field("pandas", pattern="^(pandas|spark)$")
    dim: int = Field(384, ge=1)
    min_norm: float = 0.99
    max_norm: float = 1.01
    non_blocking: list[str] = Field(default_factory=list)
    results_dir: str = "reports/validation_embeddings"
    metrics: str = "metrics/validate_embeddings.json"


def embedding_expectations(cfg: Config) -> list:
    import great_expectations.expectations as gxe

    expectations = [
        # one row per vector in the index (with in_index below: the index holds exactly these chunks)
        gxe.ExpectTableRowCountToEqual(value={"$PARAMETER": "index_rows"}),
        gxe.ExpectColumnValuesToBeUnique(column="chunk_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="doc_id"),
        # with in_corpus below: every curated document has at least one chunk
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="doc_id", min_value={"$PARAMETER": "expected_documents"},
            max_value={"$PARAMETER": "expected_documents"}),
        gxe.ExpectColumnValuesToBeBetween(column="dim", min_value=cfg.dim, max_value=cfg.dim),
        gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="norm", min_value=cfg.min_norm, max_value=cfg.max_norm),
        gxe.ExpectColumnValuesToBeInSet(column="in_corpus", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="span_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="in_index", value_set=[True]),
    ]
    return with_severity(expectations, cfg.non_blocking)


def vector_frame(cfg: Config):
    """One row per stored chunk with the derived columns the suite checks; plus the suite parameters."""
    import numpy as np
    import pandas as pd

    from pipelines.embeddings.index import CHUNKS, IDS

    root = Path(cfg.embeddings_dir)
    if not (root / CHUNKS).exists():
        raise FileNotFoundError(f"validate_embeddings: {root / CHUNKS} missing; run embed first")
    chunks = pd.read_parquet(root / CHUNKS, columns=["chunk_id", "doc_id", "start", "end", "text", "vector"])
    ids_path = root / IDS
    index_ids = json.loads(ids_path.read_text()) if ids_path.exists() else []
    corpus = read_corpus(cfg.corpus_dir, columns=["doc_id", "text"])
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
    return df, {"expected_documents": len(doc_text), "index_rows": len(index_ids)}


def run(cfg: Config, gx: GxConfig, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    from pipelines.validation.gate import run_gate

    df, parameters = vector_frame(cfg)

    return run_gate(
        suite=cfg.suite, gx_root=gx.context_root, engine=cfg.engine, load=load_frame(df, engines, spark),
        expectations=lambda: embedding_expectations(cfg), results_dir=cfg.results_dir, metrics=cfg.metrics,
        source=cfg.embeddings_dir, expectation_parameters=parameters, extra=dict(parameters),
    )
