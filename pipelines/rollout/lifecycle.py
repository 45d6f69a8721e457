"""Starting a rollout, applying the analysis' decision, and moving the registry aliases that go with it.

- `start`: promote (canary/shadow) points the alias `challenger` at the new version and writes a running state;
- `apply`: advance (next step), hold (a history entry), rollback (status rolled_back, alias `challenger`
  removed, champion untouched), complete (alias `champion` -> the challenger's version, tagged with the previous
  champion so `llmops rollback` still works, alias `challenger` removed);
- `step`: one analysis plus `apply`, what the `llmops_rollout` DAG runs each time;
- `status`, `advance`, `abort`: the `llmops rollout` CLI.
Serving replicas see a new state on their next `RolloutStore.load()` and a moved alias on their next alias poll.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pipelines.models import registry as mlflow_registry
from pipelines.models.registry import RegistryConfig
from pipelines.rollout.config import RolloutConfig
from pipelines.rollout.state import RolloutState, RolloutStateError, new_rollout, store_for


def challenger_alias() -> str:
    """serve.challenger.alias: the alias serving loads as the challenger (params.yaml)."""
    from pipelines.config import load_params

    return str(load_params().get("serve", {}).get("challenger", {}).get("alias", "challenger"))


def _store(cfg: RolloutConfig):
    return store_for(cfg.state_path, cfg.state_poll_s)


def _set_challenger(registry: RegistryConfig, version: str | int) -> None:
    c = mlflow_registry.client(registry.tracking_uri)
    c.get_model_version(registry.model_name, str(version))  # raises when the version does not exist
    c.set_registered_model_alias(registry.model_name, challenger_alias(), str(version))


def _drop_challenger(registry: RegistryConfig) -> bool:
    from mlflow.exceptions import MlflowException

    c = mlflow_registry.client(registry.tracking_uri)
    if mlflow_registry.get_alias_version(c, registry.model_name, challenger_alias()) is None:
        return False
    try:
        c.delete_registered_model_alias(registry.model_name, challenger_alias())
    except MlflowException:
        return False
    return True


def _promote_champion(registry: RegistryConfig, version: str, previous: str | None) -> dict[str, Any]:
    c = mlflow_registry.client(registry.tracking_uri)
    if previous is not None:
        c.set_model_version_tag(registry.model_name, str(version), "previous_champion", str(previous))
    moved = mlflow_registry.set_alias(registry, version)
    return dict(moved)


def start(cfg: RolloutConfig, registry: RegistryConfig, *, strategy: str, challenger_version: str | int,
          champion_version: str | int | None = None, chosen_by: str = "params",
          now: datetime | None = None) -> RolloutState:
    """A running canary or shadow rollout of `challenger_version`: alias `challenger` moved to it, state saved.
    A rollout still running is superseded (recorded as aborted) first."""
    if strategy not in ("canary", "shadow"):
        raise ValueError(f"a rollout is canary or shadow, not {strategy!r} (direct moves the champion at promote)")
    store = _store(cfg)
    current = store.load()
    if current is not None and current.running:
        store.save(current.aborted(chosen_by, f"superseded by a rollout of version {challenger_version}", now))
    _set_challenger(registry, challenger_version)
    state = new_rollout(strategy, champion_version, challenger_version, cfg.steps_for(strategy), chosen_by, now)
    store.save(state)
    return state


def _finish(registry: RegistryConfig, state: RolloutState, event: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event == "complete":
        out["champion_moved"] = _promote_champion(registry, state.challenger_version, state.champion_version)
    if event in ("complete", "rollback", "abort"):
        out["challenger_alias_removed"] = _drop_challenger(registry)
    return out


def apply(cfg: RolloutConfig, registry: RegistryConfig, report: dict[str, Any], *, by: str,
          approved: bool | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Apply an analysis report's decision to the saved state (the state must still be the one analysed).
    With `approval_required` and no answer yet: nothing changes ("awaiting_approval"); approved=False holds."""
    store = _store(cfg)
    state = store.load()
    decision = report.get("decision")
    if state is None or not state.running or decision == "noop":
        return {"action": "noop", "state": state.to_dict() if state else None}
    analysed = (report.get("rollout") or {})
    if analysed.get("rollout_id") != state.rollout_id or analysed.get("step_index") != state.step_index:
        return {"action": "stale", "state": state.to_dict(),
                "reason": "the state changed since this analysis (another look or a person acted first)"}
    ref = {"decision_record": report.get("record"), "established": report.get("established") or []}
    reason = "; ".join(report.get("reasons") or [])
    if decision in ("advance", "complete") and report.get("approval_required"):
        if approved is None:
            return {"action": "awaiting_approval", "state": state.to_dict(), "decision": decision}
        if not approved:
            new = state.held(by, f"{decision} not approved", now, **ref)
            store.save(new)
            return {"action": "hold", "state": new.to_dict(), "decision": decision}
    extra: dict[str, Any] = {}
    if decision == "advance":
        new = state.advanced(by, reason, now, **ref)
    elif decision == "complete":
        new = state.completed(by, reason, now, **ref)
    elif decision == "rollback":
        new = state.rolled_back(by, reason, now, **ref)
    else:
        new = state.held(by, reason, now, **ref)
    # aliases first, then the state: a crash in between leaves a running state whose next look redoes the move
    if new.status != "running":
        extra = _finish(registry, new, "complete" if decision == "complete" else "rollback")
    store.save(new)
    return {"action": decision, "state": new.to_dict(), **extra}


def step(cfg: RolloutConfig, registry: RegistryConfig, *, by: str = "airflow", approved: bool | None = None,
         now: datetime | None = None, online_eval=None) -> dict[str, Any]:
    """One look: the analysis (recorded) and its decision applied. Returns {"analysis": report, "applied": ...}."""
    from pipelines.rollout.analysis import run

    report = run(cfg, now=now, online_eval=online_eval)
    return {"analysis": report, "applied": apply(cfg, registry, report, by=by, approved=approved, now=now)}


def status(cfg: RolloutConfig) -> dict[str, Any]:
    """The saved state and the latest decision record (None when there is none)."""
    from pathlib import Path

    from pipelines.config import project_root
    from pipelines.io import read_json

    state = _store(cfg).load()
    root = Path(cfg.decisions_dir)
    latest = (root if root.is_absolute() else project_root() / root) / "latest.json"
    record = read_json(latest) if latest.exists() else None
    if record is not None and state is not None and (record.get("rollout") or {}).get("rollout_id") != state.rollout_id:
        record = None
    return {"state": state.to_dict() if state else None, "share": state.challenger_share() if state else 0.0,
            "shadowing": state.shadowing() if state else False, "latest_decision": record}


def advance(cfg: RolloutConfig, registry: RegistryConfig, *, by: str, reason: str = "",
            now: datetime | None = None) -> dict[str, Any]:
    """By hand: the next step, or complete (champion moves) on the last one. No statistics are consulted."""
    store = _store(cfg)
    state = store.load()
    if state is None or not state.running:
        raise RolloutStateError("no rollout running")
    reason = reason or "advanced by hand"
    if state.last_step:
        new = state.completed(by, reason, now)
        extra = _finish(registry, new, "complete")
    else:
        new, extra = state.advanced(by, reason, now), {}
    store.save(new)
    return {"action": "complete" if new.status == "completed" else "advance", "state": new.to_dict(), **extra}


def abort(cfg: RolloutConfig, registry: RegistryConfig, *, by: str, reason: str,
          now: datetime | None = None) -> dict[str, Any]:
    """Stop the rollout: every user back on the champion, alias `challenger` removed, champion untouched."""
    store = _store(cfg)
    state = store.load()
    if state is None or not state.running:
        raise RolloutStateError("no rollout running")
    new = state.aborted(by, reason, now)
    extra = _finish(registry, new, "abort")
    store.save(new)
    return {"action": "abort", "state": new.to_dict(), **extra}
