"""Evidence of live evaluation and A/B decisions for `llmops maturity`: the rollout analysis' decision records.

A record (`<rollout.decisions_dir>/<rollout_id>/<ts>.json`, written by pipelines/rollout/analysis.py at each look)
counts only for what it holds: a decision (advance, complete or rollback: one that moved traffic, not a hold) taken
on live traffic of both arms (requests on each), with per-arm metrics and their intervals. Whether a key is set in
params.yaml, or a file merely exists, scores nothing. Read without MLflow or Airflow; the newest records only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DECIDED = ("advance", "complete", "rollback")
MAX_RECORDS = 500


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) else None


def _live(record: dict[str, Any]) -> bool:
    """Both arms served requests and at least one metric has an interval on each arm."""
    arms = record.get("arms") or {}
    if not all((arms.get(a) or {}).get("requests", 0) > 0 for a in ("champion", "challenger")):
        return False
    return any(all(_num((m.get(a) or {}).get("lo")) is not None and _num((m.get(a) or {}).get("hi")) is not None
                   for a in ("champion", "challenger")) for m in (record.get("metrics") or {}).values())


def _rated(record: dict[str, Any]) -> bool:
    """The decision used user feedback on both arms (a negative-feedback rate with ratings on each)."""
    m = (record.get("metrics") or {}).get("negative_feedback_rate") or {}
    return all(((m.get(a) or {}).get("n") or 0) > 0 for a in ("champion", "challenger"))


def load_records(root: Path, decisions_dir: str | None) -> list[dict[str, Any]]:
    if not decisions_dir:
        return []
    folder = Path(decisions_dir)
    folder = folder if folder.is_absolute() else root / folder
    paths = sorted(folder.glob("*/*.json"), key=lambda p: p.name)[-MAX_RECORDS:] if folder.is_dir() else []
    out = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("decision"):
            out.append({**record, "_path": str(path)})
    return out


def _interval(m: dict[str, Any], arm: str) -> str:
    d = m.get(arm) or {}
    v, lo, hi = _num(d.get("value")), _num(d.get("lo")), _num(d.get("hi"))
    return "-" if v is None else f"{v:.3g} [{lo:.3g}, {hi:.3g}] (n {d.get('n')})" if lo is not None and hi is not None \
        else f"{v:.3g} (n {d.get('n')})"


def describe(record: dict[str, Any], metric: str | None = None, when: bool = True) -> str:
    """One line: the decision, where, on how much traffic, and one metric per arm with its interval."""
    state = record.get("rollout") or {}
    step = record.get("step") or {}
    arms = record.get("arms") or {}
    metrics = record.get("metrics") or {}
    name = metric if metric in metrics else next((k for k in ("negative_feedback_rate", "error_rate") if k in metrics),
                                                  next(iter(metrics), None))
    line = (f"{record.get('decision')} of v{state.get('challenger_version')} vs v{state.get('champion_version')} "
            f"({state.get('strategy')}, step {step.get('index', 0) + 1}/{step.get('of', '?')}"
            f"{', ' + str(record.get('at')) if when else ''}): "
            f"requests {(arms.get('champion') or {}).get('requests')}/{(arms.get('challenger') or {}).get('requests')}, "
            f"rated {(arms.get('champion') or {}).get('rated')}/{(arms.get('challenger') or {}).get('rated')} "
            "(champion/challenger)")
    if name:
        m = metrics[name]
        line += f"; {name} champion {_interval(m, 'champion')} vs challenger {_interval(m, 'challenger')}"
    return line


def figure(record: dict[str, Any], metric: str | None = None) -> str:
    """The short form for the scorecard's figure column: decision first, then one metric's intervals per arm."""
    state = record.get("rollout") or {}
    metrics = record.get("metrics") or {}
    name = metric if metric in metrics else next((k for k in ("negative_feedback_rate", "error_rate") if k in metrics),
                                                  None)
    head = f"{record.get('decision')} v{state.get('challenger_version')} vs v{state.get('champion_version')}"
    if not name:
        return head
    m = metrics[name]
    return f"{head}: {name} {_interval(m, 'challenger')} vs {_interval(m, 'champion')}"


def summary(root: Path, decisions_dir: str | None) -> dict[str, Any]:
    """What the two criteria read: the newest live decision, the newest one with feedback, counts."""
    records = load_records(root, decisions_dir)
    live = [r for r in records if _live(r)]
    decided = [r for r in live if r["decision"] in DECIDED]
    with_feedback = [r for r in decided if _rated(r) and (r.get("rollout") or {}).get("strategy") == "canary"]
    return {"records": len(records), "live": len(live), "decided": len(decided),
            "rollouts": len({(r.get("rollout") or {}).get("rollout_id") for r in records}),
            "latest_live": live[-1] if live else None, "latest_decided": decided[-1] if decided else None,
            "latest_feedback_decision": with_feedback[-1] if with_feedback else None}
