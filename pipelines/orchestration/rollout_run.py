"""What the Airflow DAGs call for a rollout (dags/llmops_rollout.py, the lifecycle's strategy choice and hand-over):
thin wrappers over pipelines/rollout (analysis, lifecycle, choice) that read params.yaml and return small,
JSON-able summaries for XCom, plus the Markdown a person reads in the HITL approvals. No Airflow import.

One `llmops_rollout` run = one look:
- `analyze`: the analysis of the running rollout (written as a decision record), summarised;
- then either `apply_recorded` (the recorded decision applied: advance, hold, rollback, complete), or, when the
  decision would take the challenger to 100% and `rollout.final_approval` is on, a person is asked (the body shows
  the per-arm table with intervals) and `apply_answer` acts on the answer: approved -> a fresh look applied with
  the approval (a challenger that got worse while the person was away is still rolled back), rejected -> hold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import load_params, load_section, project_root
from pipelines.io import read_json
from pipelines.models.registry import RegistryConfig
from pipelines.rollout.config import RolloutConfig, load_rollout_config


def _cfgs() -> tuple[RolloutConfig, RegistryConfig]:
    return load_rollout_config(), load_section("registry", RegistryConfig)


def _fmt(x: Any, metric: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}" if ("rate" in metric or abs(x) < 10) else f"{x:.0f}"
    return str(x)


def _interval(d: dict[str, Any] | None, metric: str) -> str:
    if not d or d.get("value") is None:
        return f"- (n {d.get('n', 0) if d else 0})"
    return f"{_fmt(d['value'], metric)} [{_fmt(d.get('lo'), metric)}, {_fmt(d.get('hi'), metric)}] (n {d.get('n')})"


def arm_table(report: dict[str, Any]) -> str:
    """The per-arm metrics with their intervals (each arm's own, and the difference's with its margin and
    verdict), as a Markdown table."""
    lines = ["| metric | champion [interval] | challenger [interval] | challenger - champion | margin | verdict |",
             "|---|---|---|---|---|---|"]
    for metric, m in (report.get("metrics") or {}).items():
        for role, r in (m.get("roles") or {}).items():
            diff = "-" if r.get("diff_lo") is None else f"[{_fmt(r['diff_lo'], metric)}, {_fmt(r['diff_hi'], metric)}]"
            rel = " (relative)" if m.get("relative") else ""
            lines.append(f"| {metric} ({role}) | {_interval(m.get('champion'), metric)} | "
                         f"{_interval(m.get('challenger'), metric)} | {diff}{rel} | {r.get('margin')} | "
                         f"{r.get('status')} |")
    agreement = report.get("agreement")
    if agreement:
        lines.append(f"| shadow agreement | - | {_fmt(agreement.get('value'))} [{_fmt(agreement.get('lo'))}, "
                     f"{_fmt(agreement.get('hi'))}] ({agreement.get('pairs')} pairs) | - | "
                     f"{agreement.get('min')} | {agreement.get('status', 'reported')} |")
    return "\n".join(lines)


def approval_body(report: dict[str, Any]) -> str:
    """What the approver of the last step reads: where the rollout is, the per-arm table, the reasons."""
    state = report.get("rollout") or {}
    arms = report.get("arms") or {}
    step = report.get("step") or {}
    lines = [f"### Rollout `{state.get('rollout_id')}`: version {state.get('challenger_version')} "
             f"(challenger) vs {state.get('champion_version')} (champion), {state.get('strategy')}",
             f"Decision of the analysis: **{report.get('decision')}** at step {step.get('index', 0) + 1}/"
             f"{step.get('of', '?')} (share {step.get('share')}); approving takes the challenger to 100% of "
             "traffic (completing the rollout makes it the champion).", "",
             f"Requests: champion {(arms.get('champion') or {}).get('requests')}, challenger "
             f"{(arms.get('challenger') or {}).get('requests')}; rated: champion "
             f"{(arms.get('champion') or {}).get('rated')}, challenger {(arms.get('challenger') or {}).get('rated')}.",
             "", arm_table(report), ""]
    lines += [f"- {r}" for r in report.get("reasons") or []]
    lines += ["", f"Intervals: {((report.get('inputs') or {}).get('method')) or 'anytime-valid'}; decision record "
                  f"`{report.get('record')}`; the rollout page: [/llmops/](/llmops/#rollout)"]
    return "\n".join(lines)


def analyze() -> dict[str, Any]:
    """One look at the running rollout (the decision record is written); what the DAG's next tasks need."""
    from pipelines.rollout.analysis import run

    cfg, _ = _cfgs()
    report = run(cfg)
    state = report.get("rollout") or {}
    out = {"decision": report["decision"], "reasons": list(report.get("reasons") or []),
           "approval_required": bool(report.get("approval_required")), "record": report.get("record"),
           "rollout_id": state.get("rollout_id"), "step_index": state.get("step_index"),
           "challenger_version": state.get("challenger_version")}
    if out["approval_required"]:
        out["body"] = approval_body(report)
    return out


def apply_recorded(record: str, *, by: str = "airflow") -> dict[str, Any]:
    """The recorded decision applied (lifecycle.apply: a stale record, whose rollout moved since, changes nothing)."""
    from pipelines.rollout.lifecycle import apply

    cfg, registry = _cfgs()
    return _summary(apply(cfg, registry, read_json(record), by=by))


def apply_answer(record: str, *, approved: bool, by: str) -> dict[str, Any]:
    """A person's answer to the final approval: approved -> a fresh look, applied with the approval; rejected ->
    the recorded decision held ("not approved")."""
    from pipelines.rollout.lifecycle import apply, step

    cfg, registry = _cfgs()
    if approved:
        done = step(cfg, registry, by=by, approved=True)
        return {**_summary(done["applied"]), "fresh_decision": done["analysis"]["decision"],
                "record": done["analysis"].get("record")}
    return _summary(apply(cfg, registry, read_json(record), by=by, approved=False))


def _summary(applied: dict[str, Any]) -> dict[str, Any]:
    state = applied.get("state") or {}
    return {"action": applied.get("action"), "status": state.get("status"), "step_index": state.get("step_index"),
            "share": (state.get("steps") or [{}])[state.get("step_index") or 0].get("share") if state else None,
            **{k: v for k, v in applied.items() if k not in ("state", "action")}}


# ------------------------------------------------------------------------------- the lifecycle's side of it

def strategy_choice() -> dict[str, Any]:
    """What the promotion approver reads with `rollout.choose_strategy`: the gate's evidence, each strategy's
    cost estimate, and the candidate's hash (the choice is recorded against it)."""
    from pipelines.orchestration.deploy import gate_summary
    from pipelines.rollout.choice import choice_body, cost_estimate

    cfg, _ = _cfgs()
    params = load_params()
    gate = gate_summary(decision_path=params["gate"]["decision"])
    decision = read_json(project_root() / params["gate"]["decision"])
    estimate = cost_estimate(cfg, params)
    return {**gate, "candidate_sha256": decision.get("candidate_sha256"), "default": cfg.strategy,
            "body": choice_body(gate, estimate, cfg.strategy), "estimate": estimate}


def record_strategy(strategy: str, *, by: str, candidate_sha256: str, estimate: dict | None = None) -> str:
    from pipelines.rollout.choice import record_choice

    cfg, _ = _cfgs()
    return str(record_choice(cfg, strategy, by=by, candidate_sha256=candidate_sha256,
                             evidence={"cost_estimate": estimate} if estimate else None))


def promoted_strategy() -> dict[str, Any]:
    """How the version promote just registered reaches traffic: `canary`/`shadow` when a running rollout is of that
    version (promote started it: the lifecycle hands over to llmops_rollout), else `direct` (the champion moved:
    deploy it). Reads the promotion record and the rollout state."""
    from pipelines.rollout.state import store_for

    params = load_params()
    cfg, _ = _cfgs()
    record_path = project_root() / params["promote"]["record"]
    record = read_json(record_path) if record_path.exists() else {}
    state = store_for(cfg.state_path, cfg.state_poll_s).load()
    version = record.get("version")
    out = {"strategy": "direct", "version": version, "decision": record.get("decision"), "rollout_id": None}
    if state is not None and state.running and version is not None and str(state.challenger_version) == str(version):
        out.update(strategy=state.strategy, rollout_id=state.rollout_id, champion_version=state.champion_version,
                   chosen_by=state.chosen_by)
    return out


def default_record_dir() -> Path:
    cfg, _ = _cfgs()
    path = Path(cfg.decisions_dir)
    return path if path.is_absolute() else project_root() / path
