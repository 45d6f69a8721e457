"""validate_splits: decontamination gate between train and eval/test, before anything trains or evaluates.

The batch is the union of the split files with a `split` column. Two custom expectations: no eval/test row whose
normalized text hash is in train, and at most `max_ngram_overlap_rate` of eval/test rows sharing any word
`ngram`-gram with train. Plus: doc_id unique across splits (a document in two splits).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.engines.config import EnginesConfig
from pipelines.validation.context import GxConfig
from pipelines.validation.suites import load_frame, with_severity

SECTION = "validate_splits"
SPLITS = ("train", "eval", "test")


class Config(StageConfig):
    split_dir: str = "data/splits"
    suite: str = "splits"
    engine: str = Field("pandas", pattern="^(pandas|spark)$")
    max_hash_overlap_rate: float = Field(0.0, ge=0, le=1)
    ngram: int = Field(13, ge=1)
    max_ngram_overlap_rate: float = Field(0.1, ge=0, le=1)
    non_blocking: list[str] = Field(default_factory=list)
    results_dir: str = "reports/validation_splits"
    metrics: str = "metrics/validate_splits.json"


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


def load_splits(split_dir: str, engines: EnginesConfig | None, spark=None):
    def load(engine: str):
        import pandas as pd

        files = {s: Path(split_dir) / f"{s}.parquet" for s in SPLITS}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise FileNotFoundError(f"validate_splits: {', '.join(missing)} missing; run the split stage first")
        df = pd.concat(
            [pd.read_parquet(p, columns=["doc_id", "source", "text"]).assign(split=s) for s, p in files.items()],
            ignore_index=True,
        )
        if engine == "pandas":
            return df
        from pipelines.engines.spark import session

        return session(engines, spark).createDataFrame(df)

    return load


def run(cfg: Config, gx: GxConfig, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    from pipelines.validation.gate import run_gate

    return run_gate(
        suite=cfg.suite, gx_root=gx.context_root, engine=cfg.engine, load=load_splits(cfg.split_dir, engines, spark),
        expectations=lambda: split_expectations(cfg), results_dir=cfg.results_dir, metrics=cfg.metrics,
        source=cfg.split_dir,
    )
