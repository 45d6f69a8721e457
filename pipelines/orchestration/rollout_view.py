"""The rollout on the LLMOps status page (/llmops/, the Airflow plugin): its steps, the challenger's share over time
and the per-arm metrics with their intervals, as charts drawn server-side (inline SVG from the status template;
the geometry is computed here, in plain numbers, so it is tested without a browser).

Read from what the rollout writes: the state (`rollout.state_path`) and the decision records of its looks
(`<rollout.decisions_dir>/<rollout_id>/*.json`). No Airflow import, nothing cached.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.io import read_json

# chart sizes (SVG user units)
SHARE_W, SHARE_H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 180, 44, 16, 12, 30
FOREST_W, ROW_H, LABEL_W, VALUE_W = 920, 34, 230, 380
DECISION_COLOURS = {"advance": "#1a7f37", "complete": "#1a7f37", "hold": "#888888", "rollback": "#cf222e",
                    "noop": "#888888"}
ARM_COLOURS = {"champion": "#0969da", "challenger": "#bf8700"}
MAX_LOOKS = 200  # decision records read for the timeline (the newest)


def _resolve(path: str, root: Path) -> str | Path:
    if path.startswith("s3://"):
        return path
    p = Path(path)
    return p if p.is_absolute() else root / p


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def share_after(entry: dict[str, Any], steps: list[dict[str, Any]], strategy: str) -> float:
    """The challenger's share of users once a history event has happened."""
    event = entry.get("event")
    if event in ("rollback", "abort"):
        return 0.0
    if event == "complete":
        return 1.0  # the challenger is the champion: everyone is on its version
    if strategy != "canary":
        return 0.0
    to = entry.get("to_step")
    return float(steps[to]["share"]) if isinstance(to, int) and 0 <= to < len(steps) else float(entry.get("share") or 0)


def share_chart(state: dict[str, Any], looks: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """A step line of the share over time (one point per history event) and a dot per look, coloured by its
    decision. x: seconds since the rollout started; y: share 0..1."""
    steps, strategy = state.get("steps") or [], state.get("strategy")
    t0 = _ts(state.get("created_at")) or now
    events = [(t, share_after(e, steps, strategy), e) for e in state.get("history") or [] if (t := _ts(e.get("ts")))]
    end = now if state.get("status") == "running" else max([t for t, _, _ in events] + [t0 + 1])
    span = max(end - t0, 1.0)
    iw, ih = SHARE_W - PAD_L - PAD_R, SHARE_H - PAD_T - PAD_B

    def x(t: float) -> float:
        return round(PAD_L + iw * min(max((t - t0) / span, 0.0), 1.0), 1)

    def y(share: float) -> float:
        return round(PAD_T + ih * (1.0 - share), 1)

    points: list[tuple[float, float]] = []
    share = 0.0
    for t, after, _ in events:
        if points:
            points.append((x(t), y(share)))
        share = after
        points.append((x(t), y(share)))
    points.append((x(end), y(share)))
    dots = []
    for look in looks:
        t = _ts(look.get("at"))
        if t is None:
            continue
        st = look.get("step") or {}
        s = float(st.get("share") or 0.0) if strategy == "canary" else 0.0
        dots.append({"x": x(t), "y": y(s), "colour": DECISION_COLOURS.get(look.get("decision"), "#888888"),
                     "title": f"{look.get('at')}: {look.get('decision')}"})
    return {
        "width": SHARE_W, "height": SHARE_H, "polyline": " ".join(f"{a},{b}" for a, b in points), "dots": dots,
        "y_ticks": [{"y": y(v), "label": f"{v:.0%}"} for v in (0.0, 0.25, 0.5, 0.75, 1.0)],
        "x_ticks": [{"x": x(t0 + span * f), "label": _duration(span * f)} for f in (0.0, 0.5, 1.0)],
        "x0": PAD_L, "x1": SHARE_W - PAD_R, "y_base": y(0.0),
        "step_lines": [{"y": y(float(s["share"])), "label": f"step {i + 1}: {float(s['share']):.0%}"}
                       for i, s in enumerate(steps)] if strategy == "canary" else [],
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def _label(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if "rate" in metric or abs(v) < 10 else f"{v:.0f}"


def forest_chart(report: dict[str, Any]) -> dict[str, Any]:
    """One row per metric: the champion's and the challenger's point estimate with its interval, on the row's own
    scale (rates, milliseconds and dollars do not share an axis), and the difference's verdict beside it."""
    rows = []
    plot_x0, plot_x1 = LABEL_W, FOREST_W - VALUE_W
    for i, (metric, m) in enumerate((report.get("metrics") or {}).items()):
        arms = {a: m.get(a) or {} for a in ("champion", "challenger")}
        values = [v for d in arms.values() for k in ("lo", "value", "hi") if (v := _num(d.get(k))) is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if "rate" in metric:
            lo, hi = max(0.0, min(lo, 0.0)), min(1.0, max(hi, lo + 1e-6))
        pad = (hi - lo) * 0.08 or 0.05
        lo, hi = lo - pad, hi + pad

        def x(v: float, lo: float = lo, hi: float = hi) -> float:
            return round(plot_x0 + (plot_x1 - plot_x0) * (v - lo) / (hi - lo), 1)

        y0 = i * ROW_H
        marks = []
        for j, (arm, d) in enumerate(arms.items()):
            point, a, b = _num(d.get("value")), _num(d.get("lo")), _num(d.get("hi"))
            if point is None:
                continue
            marks.append({"arm": arm, "colour": ARM_COLOURS[arm], "y": y0 + 11 + 12 * j, "x": x(point),
                          "x_lo": x(a if a is not None else point), "x_hi": x(b if b is not None else point),
                          "title": f"{arm}: {_label(point, metric)} [{_label(a, metric)}, {_label(b, metric)}] "
                                   f"n={d.get('n')}"})
        verdicts = [f"{role}: {r.get('status')}" for role, r in (m.get("roles") or {}).items()]
        diffs = [f"[{_label(_num(r.get('diff_lo')), metric)}, {_label(_num(r.get('diff_hi')), metric)}]"
                 for r in (m.get("roles") or {}).values() if r.get("diff_lo") is not None]
        worse = any(r.get("status") == "worse" for r in (m.get("roles") or {}).values())
        rows.append({"metric": metric, "y": y0, "marks": marks, "verdict": ", ".join(verdicts),
                     "diff": diffs[0] if diffs else "-", "bad": worse,
                     "n": "/".join(str((arms[a] or {}).get("n", 0)) for a in arms),
                     "axis_lo": _label(lo + pad, metric), "axis_hi": _label(hi - pad, metric)})
    return {"width": FOREST_W, "height": max(len(rows), 1) * ROW_H + 8, "rows": rows, "plot_x0": plot_x0,
            "plot_x1": plot_x1, "value_x": plot_x1 + 10, "arm_colours": ARM_COLOURS}


def collect_rollout(root: Path, params: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """The rollout section of the status page; None when no rollout was ever started (or rollout is not set up)."""
    import time

    from pipelines.config import parse_section
    from pipelines.rollout.config import RolloutConfig
    from pipelines.rollout.state import RolloutStateError, store_for

    if "rollout" not in params:
        return None
    cfg = parse_section(params, "rollout", RolloutConfig)
    try:
        state_obj = store_for(_resolve(cfg.state_path, root), cfg.state_poll_s).load()
    except RolloutStateError as exc:
        return {"error": str(exc)}
    if state_obj is None:
        return None
    state = state_obj.to_dict()
    folder = Path(_resolve(cfg.decisions_dir, root)) / state["rollout_id"]
    looks = []
    for path in sorted(folder.glob("*.json"))[-MAX_LOOKS:] if folder.is_dir() else []:
        try:
            looks.append(read_json(path))
        except (OSError, ValueError):
            continue
    latest = looks[-1] if looks else None
    now = now if now is not None else time.time()
    steps = [{**s, "index": i + 1, "current": i == state["step_index"] and state["status"] == "running",
              "done": i < state["step_index"] or state["status"] == "completed"} for i, s in enumerate(state["steps"])]
    return {
        "state": state, "steps": steps, "share": state_obj.challenger_share(), "shadowing": state_obj.shadowing(),
        "share_chart": share_chart(state, looks, now),
        "forest": forest_chart(latest) if latest else None,
        "latest": {"decision": latest.get("decision"), "reasons": latest.get("reasons") or [], "at": latest.get("at"),
                   "step": latest.get("step") or {}, "arms": latest.get("arms") or {},
                   "agreement": latest.get("agreement"), "record": latest.get("record")} if latest else None,
        "looks": [{"at": lk.get("at"), "decision": lk.get("decision"),
                   "reasons": "; ".join(lk.get("reasons") or [])} for lk in looks[-8:]][::-1],
        "history": list(state.get("history") or [])[-12:][::-1],
    }
