"""validate: the curated corpus must meet its Great Expectations suite, or the pipeline stops here.

The suite `curated_corpus` lives in the GX file context under `great_expectations/` (committed JSON), but its
thresholds are params, so every run rebuilds suite, validation definition and checkpoint from this file and
params.yaml and saves them (stable ids: unchanged params leave the committed files unchanged). The corpus is
handed to the checkpoint as a pandas dataframe through batch_parameters; Data Docs are rebuilt by the checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.io import write_json
from pipelines.stages.errors import StageFailed
from pipelines.validation.corpus import CORPUS_COLUMNS, KINDS, REQUIRED_NON_NULL, read_corpus

SECTION = "validate"


class Config(StageConfig):
    input_dir: str = "data/curated/corpus"
    gx_root: str = "great_expectations"
    suite: str = "curated_corpus"
    min_rows: int = Field(1, ge=0)
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(20000, ge=1)
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    results_dir: str = "reports/validation"
    metrics: str = "metrics/validate.json"

    @model_validator(mode="after")
    def _bounds(self) -> "Config":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars})")
        return self


def corpus_expectations(cfg: Config) -> list:
    """The curated-corpus contract as GX expectations (GX imported lazily by the caller's run())."""
    import great_expectations.expectations as gxe

    expectations = [
        # A set, not an ordered list: Spark may reorder columns on write without changing the data.
        gxe.ExpectTableColumnsToMatchSet(column_set=list(CORPUS_COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in REQUIRED_NON_NULL),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(cfg.kinds)),
        gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=cfg.min_chars, max_value=cfg.max_chars),
        # n_chars is computed upstream; checking the text itself catches a stale or wrong n_chars too.
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=cfg.min_chars, max_value=cfg.max_chars),
    ]
    return expectations


def run(cfg: Config) -> dict:
    from pipelines.validation import gx_project  # heavy: imports great_expectations

    started = time.perf_counter()
    df = read_corpus(cfg.input_dir)
    context = gx_project.open_context(cfg.gx_root)
    batch = gx_project.dataframe_batch(context, asset=cfg.suite)
    checkpoint = gx_project.save_checkpoint(context, cfg.suite, lambda: corpus_expectations(cfg), batch)
    result = checkpoint.run(batch_parameters={"dataframe": df})
    outcome = gx_project.outcome(result)
    docs = gx_project.docs_index(context)

    report = {
        "suite": cfg.suite,
        "success": outcome.success,
        "evaluated_expectations": outcome.evaluated,
        "failed_expectations": outcome.failed,
        "row_count": int(len(df)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    # Written before a failure is raised, so the gate's decision is on record either way.
    write_json(
        Path(cfg.results_dir) / f"{cfg.suite}.json",
        {**report, "run_id": outcome.run_id, "input_dir": cfg.input_dir, "data_docs": str(docs),
         "results": outcome.results},
    )
    write_json(cfg.metrics, report)
    if not outcome.success:
        lines = "\n".join(f"  - {f}" for f in outcome.failures)
        raise StageFailed(
            f"validation suite '{cfg.suite}' failed {outcome.failed} of {outcome.evaluated} expectations "
            f"on {cfg.input_dir} ({len(df)} rows):\n{lines}\nData Docs: {docs}"
        )
    return report
