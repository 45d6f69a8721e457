"""validate_embeddings: the chunk vectors must have the model's dimension, finite values and unit norms; every
curated document must have at least one chunk, every chunk must belong to a curated document and map back to its
text (`text == document[start:end]`), chunk ids must be unique, and every chunk must be in the FAISS index at its row.

chunks.parquet holds list<float32> columns, which GX's built-ins do not inspect; the batch is one row per chunk
with derived columns (`dim`, `norm`, `finite`, `in_corpus`, `span_ok`, `in_index`: pipelines/validation/batches.py)
and the suite checks those with built-in expectations. The corpus size and the index size are GX suite parameters
(`$PARAMETER: expected_documents`, `index_rows`), bound at run time, so the committed suite stays byte-stable while
the corpus grows.
"""
from __future__ import annotations

from typing import cast

from pydantic import Field

from pipelines.engines.config import EnginesConfig
from pipelines.validation.batches import EmbeddingSuiteParameters, vector_frame
from pipelines.validation.context import GxConfig
from pipelines.validation.gate import GateConfig, ValidationReport, run_gate
from pipelines.validation.suites import load_frame, with_severity

SECTION = "validate_embeddings"


class Config(GateConfig):
    embeddings_dir: str
    corpus_dir: str
    dim: int = Field(ge=1)
    min_norm: float
    max_norm: float


class Report(ValidationReport, EmbeddingSuiteParameters):
    """metrics/validate_embeddings.json: the gate's report plus the suite parameters it was checked against."""


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


def run(cfg: Config, gx: GxConfig, engines: EnginesConfig | None = None, *, spark=None) -> Report:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    batch = vector_frame(cfg.embeddings_dir, cfg.corpus_dir)
    report = run_gate(cfg, gx, load=load_frame(batch.frame, engines, spark),
                      expectations=lambda: embedding_expectations(cfg), source=cfg.embeddings_dir,
                      suite_parameters=batch.parameters)
    return cast(Report, report)  # run_gate reports the suite parameters it bound
