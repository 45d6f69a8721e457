"""One monitor run, as the monitor DAG's tasks call it: drift of the landed data and of live prompts against the
training reference (the `drift` stage's own function, with the window's paths), and online evaluation of live
traffic. An entry point like the CLI (floor 4): it runs a stage function outside DVC, on a window DVC does not
track, writing into the run's own report folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.orchestration.monitor_run import Window


def _drift(window: Window, name: str, **updates: Any) -> dict[str, Any]:
    from pipelines.config import load_params, parse_section
    from pipelines.stages import drift as drift_stage

    cfg = parse_section(load_params(), drift_stage.SECTION, drift_stage.Config)
    run_dir = Path(window["run_dir"])
    cfg = cfg.model_copy(update={"metrics": str(run_dir / f"{name}.json"), "report": str(run_dir / f"{name}.html"),
                                 **updates})
    report = drift_stage.run(cfg)
    return {"drifted": bool(report["drifted"]), "status": report["status"], "reason": report.get("reason"),
            "summary": dict(report["summary"]), "report": cfg.report, "triggered": report["summary"]["triggered"]}


def data_drift(window: Window) -> dict[str, Any]:
    """New landed data against the training corpus (texts)."""
    if not window["data"]["path"]:
        return {"drifted": False, "status": "no_new_data", "reason": "no batch landed in this window",
                "summary": {}, "report": None, "triggered": []}
    return _drift(window, "data_drift", current_path=window["data"]["path"], current_format="files", field="text",
                  since=None, until=None)


def prompt_drift(window: Window) -> dict[str, Any]:
    """Live prompts (the serving request log inside the window) against the training prompts."""
    if not Path(window["request_log"]).exists():
        return {"drifted": False, "status": "no_traffic", "reason": "no request log yet", "summary": {},
                "report": None, "triggered": []}
    return _drift(window, "prompt_drift", current_path=window["request_log"], current_format="request_log",
                  field="prompt", since=window["since"], until=window["until"])


def online_evaluation(window: Window) -> dict[str, Any]:
    """Live traffic in the window, sampled and scored with the offline scorers; alerts above the thresholds."""
    from pipelines.config import load_params, parse_section
    from pipelines.monitoring import online_eval

    cfg = parse_section(load_params(), "online_eval", online_eval.OnlineEvalConfig)
    cfg = cfg.model_copy(update={"request_log": window["request_log"], "since": window["since"],
                                 "until": window["until"],
                                 "metrics": str(Path(window["run_dir"]) / "online_eval.json")})
    report = online_eval.evaluate_window(cfg)
    return {"status": report["status"], "alerts": list(report["alerts"]), "rates": report["rates"],
            "sampled": report["sampled"], "report": cfg.metrics}
