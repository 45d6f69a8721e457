"""The MCP server's Airflow tools against the session's real Airflow (tests/conftest.py `airflow_loop`: scheduler,
dag-processor, triggerer and API server), not a stand-in: the same `pipelines.platform_api` functions the MCP tools
call log in with the generated admin password, list the unanswered approvals through `hitlDetails`, and start a real
DAG run whose conf names the caller. tests/test_mcp.py covers the MCP protocol side of the same tools."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_pending_approvals_and_trigger_retrain_on_the_real_airflow(airflow_loop, monkeypatch):
    from pipelines.platform_api import act, remote
    from pipelines.platform_api.workspace import Workspace

    api = airflow_loop["api"]
    # `make test` exports the repository's AIRFLOW_HOME: the credentials are the session Airflow's
    monkeypatch.setenv("AIRFLOW_HOME", str(airflow_loop["home"]))
    ws = Workspace.load(airflow_loop["ws"])
    # a DAG whose manual run costs nothing (no rollout running: its look is skipped), not the whole lifecycle
    ws.params.setdefault("mcp", {})["retrain_dag"] = "llmops_rollout"
    assert remote.airflow_url(ws) == api.base

    pending = remote.pending_approvals(ws)
    real = api.get("/dags/~/dagRuns/~/hitlDetails", response_received="false", limit=100)
    assert pending["airflow"] == api.base
    assert pending["total"] == real["total_entries"] == len(pending["pending"])
    for item in pending["pending"]:
        assert item["url"].startswith(api.base) and item["url"].endswith("/required_actions"), item

    before = {r["dag_run_id"] for r in api.runs("llmops_rollout")}
    started = act.trigger_retrain(ws, "mcp against the real scheduler", "test:admin")
    assert started["dag_id"] == "llmops_rollout" and started["run_id"] not in before
    runs = {r["dag_run_id"]: r for r in api.runs("llmops_rollout")}
    assert started["run_id"] in runs, sorted(runs)
    assert runs[started["run_id"]]["conf"] == {"reason": "mcp against the real scheduler", "triggered_by": "test:admin",
                                               "via": "mcp"}
    assert runs[started["run_id"]]["run_type"] == "manual"
    with pytest.raises(remote.RemoteError, match="not found|404"):
        remote.trigger_dag(ws, "no_such_dag", {"reason": "x"})
