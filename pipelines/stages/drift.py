"""drift: is a current window (new landed data, or the serving request log's prompts) drifted from the training
reference? The tests and the decision are pipelines/monitoring/drift.py; this stage wires them.

1. The current window: `current_path` in `current_format` (pipelines/monitoring/windows.py). A request log is
   compared on its prompts (prompt drift) with the training rows' prompts; other windows on their text.
2. The reference: the train split (`reference_path`), the same field. Both are subsampled (seeded) to
   `detector.max_window`. A side with fewer than `detector.min_window` texts: status "insufficient_data", no
   alarm, nothing encoded.
3. Vectors: the reference's from the embed stage's output (`embeddings_dir`) when its model and chunk size match,
   else encoded like the current window's, through the embedding cache.
4. metrics (DVC metrics: drifted flag, per-test statistic and p-value, n) and the HTML report.

The monitor DAG calls this `run(cfg)` with current_path, metrics and report overridden per window, and puts the
returned `summary` (small JSON) on the `drift_detected` Asset event.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
from pydantic import Field

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import write_json, write_text
from pipelines.monitoring.drift import DriftResult, DriftSettings, detect_drift, insufficient
from pipelines.monitoring.embedding_drift import WindowEncoder, reference_vectors_from_embeddings
from pipelines.monitoring.windows import TextWindow, load_window, read_corpus_window
from pipelines.reports import render

SECTION = "drift"
TEMPLATE = "drift.html.j2"  # reports/drift.html
MAX_REJECTS_LISTED = 20


class Config(StageConfig):
    reference_path: str
    embeddings_dir: str | None
    current_path: str
    current_format: Literal["auto", "corpus", "files", "request_log"]
    field: Literal["auto", "text", "prompt"]
    since: str | None
    until: str | None
    model_package: str
    model_path: str | None
    cache_dir: str | None
    max_tokens: int = Field(ge=8, le=254)
    encode_threads: int = Field(ge=1)
    detector: DriftSettings
    metrics: str
    report: str


class Summary(TypedDict):
    """Small JSON for an Airflow Asset event's metadata."""

    drifted: bool
    status: str
    triggered: list[str]
    p_values: dict[str, float | None]
    n_reference: int
    n_current: int
    current_path: str
    field: str
    report: str
    metrics: str


class Report(TypedDict):
    drifted: bool
    status: str  # ok | insufficient_data
    reason: str | None
    field: str
    current_path: str
    current_kind: str
    current_records: dict[str, int]  # read / texts / rejected / no_text
    current_rejects: list[dict[str, Any]]  # first ones, with file and line
    reference_vectors: str  # embeddings_dir | encoded | none
    encoded: int  # texts sent through the model (cache misses)
    result: DriftResult
    summary: Summary
    seconds: float


def _subsample(win: TextWindow, limit: int, seed: int) -> TextWindow:
    if win.n <= limit:
        return win
    idx = np.sort(np.random.default_rng(seed).choice(win.n, size=limit, replace=False))
    return TextWindow(name=win.name, texts=[win.texts[i] for i in idx], kind=win.kind, rejected=win.rejected,
                      records_read=win.records_read, skipped_no_text=win.skipped_no_text,
                      ids=None if win.ids is None else [win.ids[i] for i in idx])


def run(cfg: Config) -> Report:
    started = time.perf_counter()
    current = load_window(cfg.current_path, cfg.current_format, "text", cfg.since, cfg.until)
    field = cfg.field if cfg.field != "auto" else ("prompt" if current.kind == "request_log" else "text")
    if field == "prompt" and current.kind != "request_log":
        current = load_window(cfg.current_path, cfg.current_format, "prompt", cfg.since, cfg.until)
    if not Path(cfg.reference_path).exists():
        raise StageFailed(f"drift: reference {cfg.reference_path} not found (run `dvc repro split` first)")
    reference = read_corpus_window(cfg.reference_path, field, name="reference")
    reference = _subsample(reference, cfg.detector.max_window, cfg.detector.seed)
    current = _subsample(current, cfg.detector.max_window, cfg.detector.seed + 1)

    source, encoded = "none", 0
    result = insufficient(reference, current, cfg.detector)
    if result is None:
        encoder = WindowEncoder(cfg.model_package, cfg.model_path, cfg.cache_dir, cfg.max_tokens,
                                threads=cfg.encode_threads)
        ref_vecs = None
        if field == "text" and cfg.embeddings_dir and reference.ids is not None:
            ref_vecs = reference_vectors_from_embeddings(cfg.embeddings_dir, reference.ids, encoder.fingerprint,
                                                         cfg.max_tokens)
        source = "embeddings_dir" if ref_vecs is not None else "encoded"
        reference.vectors = ref_vecs if ref_vecs is not None else encoder.vectors(reference.texts)
        current.vectors = encoder.vectors(current.texts)
        encoded = encoder.encoded
        result = detect_drift(reference, current, cfg.detector)

    summary: Summary = {
        "drifted": result["drifted"], "status": result["status"], "triggered": result["triggered"],
        "p_values": {k: t["p_value"] for k, t in result["tests"].items()},
        "n_reference": result["n_reference"], "n_current": result["n_current"],
        "current_path": cfg.current_path, "field": field, "report": cfg.report, "metrics": cfg.metrics,
    }
    report: Report = {
        "drifted": result["drifted"], "status": result["status"], "reason": result["reason"], "field": field,
        "current_path": cfg.current_path, "current_kind": current.kind, "current_records": current.accounting(),
        "current_rejects": [{"path": r.path, "line": r.line, "reason": r.reason}
                            for r in current.rejected[:MAX_REJECTS_LISTED]],
        "reference_vectors": source, "encoded": encoded, "result": result, "summary": summary,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(cfg.metrics, report)
    write_text(cfg.report, render(TEMPLATE, **report_context(report)))
    return report


def _neg_log10(p: float | None) -> float:
    return 10.0 if not p or p <= 0 else min(10.0, -float(np.log10(p)))


def report_context(report: Report) -> dict[str, Any]:
    result = report["result"]
    tests_view = [{"name": name, "statistic": t["statistic"], "p_value": t["p_value"], "drifted": t["drifted"],
                   "lp": round(_neg_log10(t["p_value"]), 2)} for name, t in result["tests"].items()]
    return {"report": report, "result": result, "tests_view": tests_view,
            "threshold_lp": _neg_log10(result["threshold"]) if result["threshold"] else 0.0}
