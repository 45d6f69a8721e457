"""validate_splits: decontamination gate between train and eval/test, before anything trains or evaluates.

The batch is the union of the split files with a `split` column. Two custom expectations: no eval/test row whose
normalized text hash is in train, and at most `max_ngram_overlap_rate` of eval/test rows sharing any word
`ngram`-gram with train. Plus: doc_id unique across splits (a document in two splits).
"""
from __future__ import annotations

from pydantic import Field

from pipelines.engines.config import EnginesConfig
from pipelines.validation.batches import splits_frame
from pipelines.validation.context import GxConfig
from pipelines.validation.gate import GateConfig, ValidationReport, run_gate
from pipelines.validation.suites import load_frame, with_severity

SECTION = "validate_splits"
SPLITS = ("train", "eval", "test")  # the files the split stage writes


class Config(GateConfig):
    split_dir: str
    max_hash_overlap_rate: float = Field(ge=0, le=1)
    ngram: int = Field(ge=1)
    max_ngram_overlap_rate: float = Field(ge=0, le=1)


def split_expectations(cfg: Config) -> list:
    import great_expectations.expectations as gxe

    from pipelines.validation import expectations as text

    expectations = [
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),  # a row in two splits is the crudest leak
        text.ExpectColumnSplitOverlapRateToBeBelow(column="text", max_value=cfg.max_hash_overlap_rate, ngram=0),
        text.ExpectColumnSplitOverlapRateToBeBelow(
            column="text", max_value=cfg.max_ngram_overlap_rate, ngram=cfg.ngram
        ),
    ]
    return with_severity(expectations, cfg.non_blocking)


def run(cfg: Config, gx: GxConfig, engines: EnginesConfig | None = None, *, spark=None) -> ValidationReport:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    batch = splits_frame(cfg.split_dir, SPLITS)
    return run_gate(cfg, gx, load=load_frame(batch, engines, spark),
                    expectations=lambda: split_expectations(cfg), source=cfg.split_dir)
