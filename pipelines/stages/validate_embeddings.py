"""validate_embeddings: the vectors must have the model's dimension, finite values, unit norms, and exactly one
vector per curated document (the embedding unit today), each also present in the FAISS id list.

vectors.parquet holds list<float32> columns, which GX's built-ins do not inspect; the loader derives one row per
vector (`dim`, `norm`, `finite`, `in_corpus`, `in_index`) and the suite checks those with built-in expectations.
The expected row count is a GX suite parameter (`$PARAMETER: expected_rows`), bound at run time, so the committed
suite stays byte-stable while the corpus grows.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.engines.config import EnginesConfig
from pipelines.stages.validate import with_severity
from pipelines.validation.corpus import read_corpus

SECTION = "validate_embeddings"


class Config(StageConfig):
    embeddings_dir: str = "data/embeddings"
    corpus_dir: str = "data/curated/corpus"
    gx_root: str = "great_expectations"
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
        gxe.ExpectTableRowCountToEqual(value={"$PARAMETER": "expected_rows"}),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
        gxe.ExpectColumnValuesToBeBetween(column="dim", min_value=cfg.dim, max_value=cfg.dim),
        gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="norm", min_value=cfg.min_norm, max_value=cfg.max_norm),
        gxe.ExpectColumnValuesToBeInSet(column="in_corpus", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="in_index", value_set=[True]),
    ]
    return with_severity(expectations, cfg.non_blocking)


def vector_frame(cfg: Config):
    """One row per stored vector with the derived columns the suite checks; plus the expected row count."""
    import numpy as np
    import pandas as pd

    root = Path(cfg.embeddings_dir)
    if not (root / "vectors.parquet").exists():
        raise FileNotFoundError(f"validate_embeddings: {root / 'vectors.parquet'} missing; run embed first")
    vec = pd.read_parquet(root / "vectors.parquet", columns=["doc_id", "vector"])
    ids_path = root / "index_ids.json"
    index_ids = set(json.loads(ids_path.read_text())) if ids_path.exists() else set()
    corpus_ids = set(read_corpus(cfg.corpus_dir, columns=["doc_id"])["doc_id"])
    dims, norms, finite = [], [], []
    for v in vec["vector"]:
        a = np.asarray(v if v is not None else [], dtype=np.float64)
        dims.append(int(a.size))
        ok = bool(a.size) and bool(np.isfinite(a).all())
        finite.append(ok)
        norms.append(float(np.linalg.norm(a)) if ok else float("nan"))
    df = pd.DataFrame({
        "doc_id": vec["doc_id"],
        "dim": dims,
        "norm": norms,
        "finite": finite,
        "in_corpus": vec["doc_id"].isin(corpus_ids),
        "in_index": vec["doc_id"].isin(index_ids),
    })
    return df, len(corpus_ids)


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    from pipelines.validation.gate import run_gate

    df, expected = vector_frame(cfg)

    def load(engine: str):
        if engine == "pandas":
            return df
        from pipelines.data.sparkio import session

        return session(engines, spark).createDataFrame(df)

    return run_gate(
        suite=cfg.suite, gx_root=cfg.gx_root, engine=cfg.engine, load=load,
        expectations=lambda: embedding_expectations(cfg), results_dir=cfg.results_dir, metrics=cfg.metrics,
        source=cfg.embeddings_dir, expectation_parameters={"expected_rows": expected},
        extra={"expected_rows": expected},
    )
