"""The Great Expectations 1.x file context under `great_expectations/`, kept in sync with params.yaml.

The suite, validation definition and checkpoint are committed JSON, but their thresholds come from params.yaml,
so each run rebuilds them from code and saves them with `add_or_update` (GX keeps the ids of unchanged objects
stable, so an unchanged params.yaml leaves the committed files byte-identical). Callers import this module
inside their `run()`: importing GX takes ~15 s.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# No telemetry from a pipeline run; must be set before great_expectations is imported.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.core.batch_definition import BatchDefinition  # noqa: E402
from great_expectations.data_context import FileDataContext  # noqa: E402

DATASOURCE = "pandas_runtime"  # dataframes handed over at run time through batch_parameters
DOCS_SITE = "local_site"


@dataclass(frozen=True)
class Failure:
    expectation: str
    column: str | None
    detail: str

    def __str__(self) -> str:
        where = f" on '{self.column}'" if self.column else ""
        return f"{self.expectation}{where}: {self.detail}"


@dataclass
class Outcome:
    success: bool
    evaluated: int
    failed: int
    failures: list[Failure] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""


def open_context(gx_root: str | Path) -> FileDataContext:
    """Open (or scaffold on first use) the file context whose great_expectations.yml lies in `gx_root`.

    `context_root_dir` rather than `project_root_dir`: the latter appends GX 1.x's default `gx/` folder.
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", context_root_dir=str(Path(gx_root).resolve()))
    bars = context.config.progress_bars
    bars_on = bars is None or (bars.get("globally") if isinstance(bars, dict) else bars.globally)
    if context.config.analytics_enabled is not False or bars_on:
        # Written into the committed yml once: no telemetry, and no progress bars in task logs.
        context.config.analytics_enabled = False
        context.config.progress_bars = ProgressBarsConfig(globally=False)
        context._save_project_config()
    return context


def dataframe_batch(context: FileDataContext, asset: str, batch: str = "whole_dataframe") -> BatchDefinition:
    """A pandas dataframe asset with a whole-dataframe batch definition, created once and reused."""
    try:
        source = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError, LookupError):
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        data_asset = source.get_asset(asset)
    except LookupError:
        data_asset = source.add_dataframe_asset(name=asset)
    try:
        return data_asset.get_batch_definition(batch)
    except KeyError:
        return data_asset.add_batch_definition_whole_dataframe(batch)


def _with_stable_id(suite: str, expectation: gxe.Expectation) -> gxe.Expectation:
    """Derive the id from the expectation's content. GX 1.24's add_or_update compares ids too, so a rebuilt
    suite would get fresh uuids on every run and the committed JSON would churn; content ids do not."""
    content = json.dumps(
        {"suite": suite, "type": expectation.expectation_type, "config": expectation.configuration.kwargs},
        sort_keys=True,
        default=str,
    )
    expectation.id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"llmops-gx:{content}"))
    return expectation


def _missing_suite(context: FileDataContext, name: str) -> bool:
    from great_expectations.exceptions import DataContextError

    try:
        context.suites.get(name)
    except DataContextError:
        return True
    return False


def save_checkpoint(
    context: FileDataContext,
    name: str,
    suite_expectations: Callable[[], list[gxe.Expectation]],
    batch: BatchDefinition,
) -> gx.Checkpoint:
    """(Re)build suite -> validation definition -> checkpoint under one name and save all three."""
    if _missing_suite(context, name):
        # Create empty first: `add` stamps random ids, the update path below keeps the content ids.
        context.suites.add(gx.ExpectationSuite(name=name))
    suite = gx.ExpectationSuite(name=name, expectations=suite_expectations())
    for expectation in suite.expectations:  # after construction: GX refuses expectations that arrive with ids
        _with_stable_id(name, expectation)
    suite = context.suites.add_or_update(suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    checkpoint = gx.Checkpoint(
        name=name,
        validation_definitions=[definition],
        actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
        # SUMMARY: counts plus a few unexpected values, enough for a readable failure message.
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
    )
    return context.checkpoints.add_or_update(checkpoint)


def _describe(result: dict[str, Any], kwargs: dict[str, Any]) -> str:
    """What went wrong, in the words a person needs: the observed value or how many rows broke the rule."""
    if "observed_value" in result:
        observed = result["observed_value"]
        bounds = {k: kwargs[k] for k in ("min_value", "max_value", "value_set", "column_set") if k in kwargs}
        return f"observed {observed!r}" + (f", expected {bounds}" if bounds else "")
    count = result.get("unexpected_count")
    if count is not None:
        pct = result.get("unexpected_percent")
        sample = result.get("partial_unexpected_list") or []
        text = f"{count} unexpected rows"
        if pct is not None:
            text += f" ({pct:.2f}%)"
        if sample:
            text += f", e.g. {[str(v)[:40] for v in sample[:3]]}"
        return text
    return "failed"


def outcome(checkpoint_result: Any) -> Outcome:
    """Flatten a CheckpointResult (one validation definition or more) into counts and failures."""
    failures: list[Failure] = []
    rows: list[dict[str, Any]] = []
    evaluated = failed = 0
    for suite_result in checkpoint_result.run_results.values():
        stats = suite_result.statistics
        evaluated += int(stats["evaluated_expectations"])
        failed += int(stats["unsuccessful_expectations"])
        for res in suite_result.results:
            cfg = res.expectation_config
            kwargs = dict(cfg.kwargs)
            column = kwargs.get("column")
            exc = res.exception_info or {}
            if exc.get("raised_exception"):
                detail = f"raised {exc.get('exception_message', '')[:200]}"
            else:
                detail = _describe(res.result or {}, kwargs)
            rows.append(
                {"expectation": cfg.type, "column": column, "success": bool(res.success), "detail": detail}
            )
            if not res.success:
                failures.append(Failure(cfg.type, column, detail))
    return Outcome(
        success=bool(checkpoint_result.success),
        evaluated=evaluated,
        failed=failed,
        failures=failures,
        results=rows,
        run_id=str(checkpoint_result.run_id),
    )


def docs_index(context: FileDataContext) -> Path:
    """Path of the local Data Docs site's index.html (built by the checkpoint's UpdateDataDocsAction)."""
    return Path(context.root_directory) / "uncommitted" / "data_docs" / DOCS_SITE / "index.html"
