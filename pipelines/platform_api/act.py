"""Acting on the platform: a manual lifecycle run, a registry rollback, aborting a rollout.

Each call, allowed or refused, is one JSON line of the audit log (`mcp.audit_log`) with its caller, arguments and
outcome, written before the answer goes back. Who may call is the transport's business (pipelines/mcp_server):
these functions only act and record. Approvals (a new source, a promotion, a rollout's last step) are not here on
purpose: they stay with a person in Airflow's UI.
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from typing import Any, Callable

from pipelines.platform_api import remote
from pipelines.platform_api.read import get_version, rollout_store
from pipelines.platform_api.workspace import PlatformError, Workspace

_LOCK = threading.Lock()


def audit(ws: Workspace, tool: str, caller: str, arguments: dict[str, Any], outcome: str,
          detail: Any = None) -> None:
    """Append one line to the audit log (`mcp.audit_log`), flushed and fsynced."""
    path = ws.path(ws.section("mcp").get("audit_log") or "logs/mcp_actions.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "tool": tool,
                       "caller": caller, "arguments": arguments, "outcome": outcome, "detail": detail},
                      default=str, sort_keys=True)
    with _LOCK, open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def audited(ws: Workspace, tool: str, caller: str, arguments: dict[str, Any], fn: Callable[[], dict]) -> dict:
    try:
        result = fn()
    except Exception as exc:
        audit(ws, tool, caller, arguments, "error", str(exc))
        raise
    audit(ws, tool, caller, arguments, "done", result)
    return result


def trigger_retrain(ws: Workspace, reason: str, caller: str) -> dict[str, Any]:
    """A manual run of the lifecycle DAG through Airflow's REST API; the retrain policy records it as manual."""
    if not reason or not reason.strip():
        raise PlatformError("trigger_retrain needs a reason (it is recorded with the run)")
    dag_id = ws.section("mcp").get("retrain_dag") or "llmops_lifecycle"
    return remote.trigger_dag(ws, dag_id, {"reason": reason.strip(), "triggered_by": caller, "via": "mcp"})


def rollback(ws: Workspace, caller: str, to: int | None = None) -> dict[str, Any]:
    """`llmops rollback`: the champion alias back to the previous champion (or to version `to`); running servers
    pick it up on their next alias poll."""
    from pipelines.serving.rollback import rollback as do_rollback

    if to is not None:
        get_version(ws, to)  # NotFound naming the versions that exist
    try:
        moved = do_rollback(ws.registry(), to)
    except ValueError as exc:
        raise PlatformError(str(exc)) from None
    return {**moved, "by": caller}


def abort_rollout(ws: Workspace, reason: str, caller: str) -> dict[str, Any]:
    """Stop the running rollout: every replica serves the champion only on its next state load."""
    store = rollout_store(ws)
    state = store.load() if store is not None else None
    if state is None:
        raise PlatformError("no rollout recorded: nothing to abort")
    if not state.running:
        raise PlatformError(f"rollout {state.rollout_id} is {state.status}, not running: nothing to abort")
    new = state.aborted(by=f"mcp:{caller}", reason=reason or "aborted through MCP")
    store.save(new)
    return {"rollout_id": new.rollout_id, "status": new.status, "champion_version": new.champion_version,
            "challenger_version": new.challenger_version, "by": caller}
