"""The platform's state on one page (the Airflow plugin view at /llmops/): the registry's champion and challenger,
the latest gate decision and deployment, the rollout (steps, share over time, per-arm metrics with intervals:
pipelines/orchestration/rollout_view.py), drift status of the latest monitor run, retrains and data approvals.

Everything is read from the files and registry the stages write; nothing is cached, so the page is what a person
would find by looking. The Airflow plugin adds what only Airflow knows (pending approvals) and renders it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import load_params, project_root
from pipelines.io import read_json
from pipelines.reports import render

TEMPLATE = "status.html.j2"


def _json(path: Path) -> Any:
    try:
        return read_json(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def registry_aliases(registry: dict[str, Any]) -> dict[str, Any]:
    """champion / challenger: version, run id and when the version was created."""
    from pipelines.models.registry import client, get_alias_version, resolve_tracking_uri

    uri = resolve_tracking_uri(registry["tracking_uri"])
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return {}
    c = client(registry["tracking_uri"])
    out = {}
    for alias in dict.fromkeys([registry["alias"], "challenger"]):
        version = get_alias_version(c, registry["model_name"], alias)
        if version is not None:
            out[alias] = {"version": int(version.version), "run_id": version.run_id,
                          "created": int(version.creation_timestamp or 0) // 1000,
                          "description": version.description or ""}
    return out


def latest_monitor_run(reports_dir: Path) -> dict[str, Any] | None:
    runs = sorted((p for p in reports_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) \
        if reports_dir.exists() else []
    if not runs:
        return None
    run = runs[-1]
    windows = []
    for path in sorted(run.glob("*.json")):
        r = _json(path)
        if isinstance(r, dict) and "drifted" in r:  # a drift report (data or prompts)
            triggered = (r.get("summary") or {}).get("triggered") or (r.get("result") or {}).get("triggered") or []
            windows.append({"name": path.stem, "status": r.get("status"), "drifted": bool(r.get("drifted")),
                            "triggered": list(triggered)})
    return {"run": run.name, "windows": windows, "reports": sorted(p.name for p in run.glob("*.html"))}


def collect(root: Path | None = None) -> dict[str, Any]:
    root = root or project_root()
    params = load_params(root / "params.yaml")
    try:
        aliases = registry_aliases(params["registry"])
    except Exception as exc:  # a broken registry is shown, not a broken page
        aliases = {"error": str(exc)}
    retrains = _json(root / params["retrain"]["history"]) or []
    return {
        "model_name": params["registry"]["model_name"],
        "aliases": aliases,
        "gate": _json(root / params["gate"]["decision"]),
        "promotion": _json(root / params["promote"]["record"]),
        "deployment": _json(root / "reports" / "deployment.json"),
        "drift_stage": _json(root / "metrics" / "drift.json"),
        "monitor": latest_monitor_run(root / params["monitor"]["reports_dir"]),
        "retrains": retrains[-10:],
        "approvals": _json(root / params["landing"]["landed_dir"] / "approvals.json") or {},
        "rollout": _rollout(root, params),
    }


def _rollout(root: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    from pipelines.orchestration.rollout_view import collect_rollout

    try:
        return collect_rollout(root, params)
    except Exception as exc:  # a broken rollout record is shown, not a broken page
        return {"error": str(exc)}


def render_status(state: dict[str, Any], pending_approvals: list[dict[str, Any]] | None = None) -> str:
    return render(TEMPLATE, s=state, pending=pending_approvals or [])
