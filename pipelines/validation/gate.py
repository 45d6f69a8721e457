"""One validation gate: rebuild a suite's checkpoint from params, run it on a Pandas or Spark batch, keep the
result, and stop the pipeline with a short summary when a blocking expectation fails.

Shared by the validate_raw / validate / validate_splits / validate_embeddings stages. Light to import: GX (slow) is
imported only when `run_gate` runs, so stage modules can name `GateConfig` and `ValidationReport` at module level.

Results kept:
- `<results_dir>/<suite>.json`: the latest run's summary (a DVC output, so DVC clears it before each run);
- `<gx.context_root>/uncommitted/run_summaries/<suite>/<run time>.json`: one summary per run, never cleared by DVC;
- `<gx.context_root>/uncommitted/validations/`: GX's own full validation result per run (its results store);
- Data Docs HTML under `<gx.context_root>/uncommitted/data_docs/local_site/` (index.html plus one page per result).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypedDict

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import write_json
from pipelines.validation.context import GxConfig


class GateConfig(StageConfig):
    """The settings every validate stage's section has; each stage's Config adds its own thresholds."""

    suite: str  # the GX suite (and checkpoint) name under gx.context_root
    engine: Literal["pandas", "spark"]  # spark: the same suite on a Spark DataFrame (engines.spark)
    non_blocking: list[str]  # expectation types reported as warnings only (GX severity "warning")
    results_dir: str  # <suite>.json: the latest run's summary
    metrics: str


class ValidationReport(TypedDict):
    """metrics/validate*.json (the suite parameters a gate bound, if any, follow these keys)."""

    suite: str
    engine: str
    success: bool
    evaluated_expectations: int
    failed_expectations: int  # blocking failures only
    warnings: int  # failed non-blocking expectations
    row_count: int
    seconds: float


def run_gate(
    cfg: GateConfig,
    gx: GxConfig,
    *,
    load: Callable[[str], Any],
    expectations: Callable[[], list],
    source: str,
    suite_parameters: Mapping[str, Any] | None = None,
) -> ValidationReport:
    """`load(engine)` returns the batch's dataframe (pandas.DataFrame or pyspark DataFrame); `source` names the
    input in messages. `suite_parameters` are bound to the suite's `$PARAMETER`s at run time and reported."""
    from pipelines.validation import gx_project  # heavy: imports great_expectations

    started = time.perf_counter()
    suite, engine = cfg.suite, cfg.engine
    df = load(engine)
    rows = int(len(df)) if engine == "pandas" else int(df.count())
    context = gx_project.open_context(gx.context_root)
    batch = gx_project.dataframe_batch(context, asset=suite, engine=engine)
    name = suite if engine == "pandas" else f"{suite}_{engine}"
    checkpoint = gx_project.save_checkpoint(context, suite, expectations, batch, definition_name=name)
    parameters = dict(suite_parameters) if suite_parameters else None
    result = checkpoint.run(batch_parameters={"dataframe": df}, expectation_parameters=parameters)
    outcome = gx_project.outcome(result, context)
    index = gx_project.docs_index(context)
    page = outcome.docs_pages[0] if outcome.docs_pages else str(index)

    report: ValidationReport = {
        "suite": suite,
        "engine": engine,
        "success": outcome.success,
        "evaluated_expectations": outcome.evaluated,
        "failed_expectations": outcome.failed,
        "warnings": len(outcome.warnings),
        "row_count": rows,
        "seconds": round(time.perf_counter() - started, 2),
        **(parameters or {}),  # type: ignore[typeddict-item]  # what the suite was checked against
    }
    summary = {
        **report,
        "run_id": outcome.run_id,
        "input": source,
        "data_docs": str(index),
        "data_docs_page": page,
        "failures": [str(f) for f in outcome.failures],
        "warning_details": [str(w) for w in outcome.warnings],
        "results": outcome.results,
    }
    # Written before a failure is raised, so the gate's decision is on record either way.
    write_json(Path(cfg.results_dir) / f"{suite}.json", summary)
    history = (Path(gx.context_root) / "uncommitted" / "run_summaries" / suite
               / f"{outcome.run_time or int(time.time())}.json")
    write_json(history, summary)
    write_json(cfg.metrics, report)
    for w in outcome.warnings:
        print(f"[validate] WARNING (non-blocking) {suite}: {w}")
    if not outcome.success:
        lines = "\n".join(f"  - {f}" for f in outcome.failures)
        warn = "".join(f"\n  (warning) {w}" for w in outcome.warnings)
        raise StageFailed(
            f"validation suite '{suite}' failed {outcome.failed} of {outcome.evaluated} expectations "
            f"on {source} ({rows} rows):\n{lines}{warn}\nData Docs: {page}\n(index: {index})"
        )
    return report
