"""One validation gate: rebuild a suite's checkpoint from params, run it on a Pandas or Spark batch, keep the
result, and stop the pipeline with a short summary when a blocking expectation fails.

Shared by the validate_raw / validate / validate_splits / validate_embeddings stages. Imports GX (slow): call it
from inside a stage's run().

Results kept:
- `<results_dir>/<suite>.json`: the latest run's summary (a DVC output, so DVC clears it before each run);
- `<gx_root>/uncommitted/run_summaries/<suite>/<run time>.json`: one summary per run, never cleared by DVC;
- `<gx_root>/uncommitted/validations/`: GX's own full validation result per run (its validation results store);
- Data Docs HTML under `<gx_root>/uncommitted/data_docs/local_site/` (index.html plus one page per result).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pipelines.io import write_json
from pipelines.errors import StageFailed
from pipelines.validation import gx_project


def run_gate(
    *,
    suite: str,
    gx_root: str,
    engine: str,
    load: Callable[[str], Any],
    expectations: Callable[[], list],
    results_dir: str,
    metrics: str,
    source: str,
    expectation_parameters: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict:
    """`load(engine)` returns the batch's dataframe (pandas.DataFrame or pyspark DataFrame)."""
    started = time.perf_counter()
    df = load(engine)
    rows = int(len(df)) if engine == "pandas" else int(df.count())
    context = gx_project.open_context(gx_root)
    batch = gx_project.dataframe_batch(context, asset=suite, engine=engine)
    name = suite if engine == "pandas" else f"{suite}_{engine}"
    checkpoint = gx_project.save_checkpoint(context, suite, expectations, batch, definition_name=name)
    result = checkpoint.run(batch_parameters={"dataframe": df}, expectation_parameters=expectation_parameters)
    outcome = gx_project.outcome(result, context)
    index = gx_project.docs_index(context)
    page = outcome.docs_pages[0] if outcome.docs_pages else str(index)

    report = {
        "suite": suite,
        "engine": engine,
        "success": outcome.success,
        "evaluated_expectations": outcome.evaluated,
        "failed_expectations": outcome.failed,
        "warnings": len(outcome.warnings),
        "row_count": rows,
        "seconds": round(time.perf_counter() - started, 2),
        **(extra or {}),
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
    write_json(Path(results_dir) / f"{suite}.json", summary)
    history = Path(gx_root) / "uncommitted" / "run_summaries" / suite / f"{outcome.run_time or int(time.time())}.json"
    write_json(history, summary)
    write_json(metrics, report)
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

