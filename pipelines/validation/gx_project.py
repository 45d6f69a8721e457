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

import pipelines.validation.expectations  # noqa: E402,F401  registers the custom text expectations

DATASOURCE = "pandas_runtime"  # dataframes handed over at run time through batch_parameters
SPARK_DATASOURCE = "spark_runtime"  # the same suites on Spark DataFrames
DOCS_SITE = "local_site"
ENGINES = ("pandas", "spark")


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
    success: bool  # no blocking (severity critical) expectation failed; warnings do not count
    evaluated: int
    failed: int  # blocking failures
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)  # failed non-blocking expectations (severity warning/info)
    results: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    run_time: str = ""
    docs_pages: list[str] = field(default_factory=list)  # Data Docs page of each validation result


def open_context(context_root: str | Path) -> FileDataContext:
    """Open (or scaffold on first use) the file context whose great_expectations.yml lies in `context_root`
    (params.yaml `gx.context_root`).

    `context_root_dir` rather than `project_root_dir`: the latter appends GX 1.x's default `gx/` folder.
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", context_root_dir=str(Path(context_root).resolve()))
    bars = context.config.progress_bars
    bars_on = bars is None or (bars.get("globally") if isinstance(bars, dict) else bars.globally)
    if context.config.analytics_enabled is not False or bars_on:
        # Written into the committed yml once: no telemetry, and no progress bars in task logs.
        context.config.analytics_enabled = False
        context.config.progress_bars = ProgressBarsConfig(globally=False)
        context._save_project_config()
    return context


def dataframe_batch(
    context: FileDataContext, asset: str, batch: str = "whole_dataframe", engine: str = "pandas"
) -> BatchDefinition:
    """A dataframe asset (pandas or Spark) with a whole-dataframe batch definition, created once and reused."""
    if engine not in ENGINES:
        raise ValueError(f"unknown validation engine '{engine}'; known: {', '.join(ENGINES)}")
    name = DATASOURCE if engine == "pandas" else SPARK_DATASOURCE
    try:
        source = context.data_sources.get(name)
    except (KeyError, ValueError, LookupError):
        source = context.data_sources.add_pandas(name) if engine == "pandas" else context.data_sources.add_spark(name)
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
    definition_name: str | None = None,
) -> gx.Checkpoint:
    """(Re)build suite -> validation definition -> checkpoint and save all three. The suite is `name`; the
    validation definition and checkpoint are `definition_name` (default `name`; `<name>_spark` for Spark)."""
    definition_name = definition_name or name
    if _missing_suite(context, name):
        # Create empty first: `add` stamps random ids, the update path below keeps the content ids.
        context.suites.add(gx.ExpectationSuite(name=name))
    suite = gx.ExpectationSuite(name=name, expectations=suite_expectations())
    for expectation in suite.expectations:  # after construction: GX refuses expectations that arrive with ids
        _with_stable_id(name, expectation)
    suite = context.suites.add_or_update(suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=definition_name, data=batch, suite=suite)
    )
    checkpoint = gx.Checkpoint(
        name=definition_name,
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
        bounds = {k: kwargs[k] for k in ("min_value", "max_value", "value", "value_set", "column_set", "quantile_ranges") if k in kwargs}
        return f"observed {observed!r}" + (f", expected {bounds}" if bounds else "")
    count = result.get("unexpected_count")
    if count is not None:
        pct = result.get("unexpected_percent")
        sample = result.get("partial_unexpected_list") or []
        total = result.get("element_count")
        text = f"{count} unexpected rows" + (f" of {total}" if total is not None else "")
        if pct is not None:
            text += f" ({pct:.2f}%)"
        if sample:
            text += f", e.g. {[str(v)[:40] for v in sample[:3]]}"
        return text
    return "failed"


def _exception(info: Any) -> str:
    """The exception message of a result, whether GX reports it flat or per metric (a dict of dicts)."""
    if not isinstance(info, dict):
        return ""
    if info.get("raised_exception") or ("exception_message" in info and "raised_exception" not in info):
        return str(info.get("exception_message") or "exception")
    for value in info.values():
        if isinstance(value, dict) and (value.get("raised_exception") or value.get("exception_message")):
            return str(value.get("exception_message") or "exception")
    return ""


def _severity(cfg: Any) -> str:
    severity = getattr(cfg, "severity", None) or "critical"
    return str(getattr(severity, "value", severity))


def outcome(checkpoint_result: Any, context: FileDataContext | None = None) -> Outcome:
    """Flatten a CheckpointResult (one validation definition or more) into counts, blocking failures and warnings.

    Blocking means GX 1.x's native `severity="critical"` (the default); a failed `warning`/`info` expectation is
    reported but does not fail the gate (GX itself marks the whole result unsuccessful either way).
    """
    failures: list[Failure] = []
    warnings: list[Failure] = []
    rows: list[dict[str, Any]] = []
    pages: list[str] = []
    evaluated = 0
    for key, suite_result in checkpoint_result.run_results.items():
        if context is not None:
            pages.extend(docs_pages(context, key))
        stats = suite_result.statistics
        evaluated += int(stats["evaluated_expectations"])
        for res in suite_result.results:
            cfg = res.expectation_config
            kwargs = dict(cfg.kwargs)
            column = kwargs.get("column")
            exc = _exception(res.exception_info)
            if exc:
                detail = f"raised {exc[:200]}"
            else:
                detail = _describe(res.result or {}, kwargs)
            severity = _severity(cfg)
            rows.append(
                {"expectation": cfg.type, "column": column, "success": bool(res.success), "severity": severity,
                 "observed": (res.result or {}).get("observed_value"),
                 "unexpected_count": (res.result or {}).get("unexpected_count"), "detail": detail}
            )
            if not res.success:
                (failures if severity == "critical" else warnings).append(Failure(cfg.type, column, detail))
    run_id = checkpoint_result.run_id
    return Outcome(
        success=not failures,
        evaluated=evaluated,
        failed=len(failures),
        failures=failures,
        warnings=warnings,
        results=rows,
        run_id=str(run_id),
        run_time=run_id.run_time.strftime("%Y%m%dT%H%M%S.%fZ") if getattr(run_id, "run_time", None) else "",
        docs_pages=pages,
    )


def docs_pages(context: FileDataContext, result_identifier: Any) -> list[str]:
    """Local paths of the Data Docs pages rendering one validation result."""
    try:
        urls = context.get_docs_sites_urls(resource_identifier=result_identifier, site_names=[DOCS_SITE])
    except Exception:  # noqa: BLE001  docs are a convenience: never fail the gate on a docs lookup
        return []
    return [u["site_url"].removeprefix("file://") for u in urls if u.get("site_url")]


def docs_index(context: FileDataContext) -> Path:
    """Path of the local Data Docs site's index.html (built by the checkpoint's UpdateDataDocsAction)."""
    return Path(context.root_directory) / "uncommitted" / "data_docs" / DOCS_SITE / "index.html"
