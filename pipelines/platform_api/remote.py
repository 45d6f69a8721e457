"""The platform's two HTTP APIs as a caller sees them: the served champion (OpenAI-compatible, guard included) and
Airflow's REST API (pending human approvals, a manual lifecycle run).

Airflow 3's REST API takes a JWT from `POST /auth/token` (user and password: the environment variables
`mcp.airflow_user_env` / `mcp.airflow_password_env` name, else the local `admin` user and the password Airflow's
simple auth manager generated into AIRFLOW_HOME). Approvals are listed, never given: answering one stays with a
person in Airflow's UI, at the URL each entry carries.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from pipelines.platform_api.workspace import PlatformError, Workspace


class RemoteError(PlatformError):
    """The serving API or Airflow did not answer as expected (unreachable, refused, or an error status)."""


def _mcp(ws: Workspace) -> dict[str, Any]:
    return ws.section("mcp")


def serve_url(ws: Workspace) -> str:
    if url := _mcp(ws).get("serve_url"):
        return str(url).rstrip("/")
    serve = ws.section("serve")
    return f"http://{serve.get('host', '127.0.0.1')}:{serve.get('port', 8000)}"


def airflow_url(ws: Workspace) -> str:
    if url := _mcp(ws).get("airflow_url"):
        return str(url).rstrip("/")
    af = ws.section("airflow")
    return f"http://{af.get('api_host', '127.0.0.1')}:{af.get('api_port', 8080)}"


def _timeout(ws: Workspace) -> float:
    return float(_mcp(ws).get("timeout_s") or 30)


# ---------------------------------------------------------------------------------------------------- serving


def ask(ws: Workspace, question: str, rag: bool, api_key: str | None, max_tokens: int) -> dict[str, Any]:
    """One chat completion from the served champion (through its guard): the answer, the version and alias that
    served it, the request id, citations in RAG mode, and whether the guard refused."""
    if not question or not question.strip():
        raise PlatformError("ask needs a non-empty question")
    model = ws.registry().model_name
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "rag": bool(rag)}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = serve_url(ws) + "/v1/chat/completions"
    try:
        r = httpx.post(url, json=body, headers=headers, timeout=_timeout(ws))
    except httpx.HTTPError as exc:
        raise RemoteError(f"the serving API at {serve_url(ws)} is not reachable ({exc.__class__.__name__}: {exc}); "
                          "start it with `llmops serve`") from None
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code != 200:
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else r.text[:300]
        raise RemoteError(f"the serving API answered {r.status_code}: {msg}")
    choice = (data.get("choices") or [{}])[0]
    answer = (choice.get("message") or {}).get("content")
    return {"answer": answer, "finish_reason": choice.get("finish_reason"), "rag": bool(rag),
            "model_version": r.headers.get("x-llmops-model-version"), "alias": r.headers.get("x-llmops-alias"),
            "request_id": r.headers.get("x-request-id"), "system_fingerprint": data.get("system_fingerprint"),
            "citations": data.get("citations"), "usage": data.get("usage"),
            "refused_by_guard": choice.get("finish_reason") == "content_filter",
            "guard": data.get("guard"), "served_by": serve_url(ws)}


# ---------------------------------------------------------------------------------------------------- airflow


def _airflow_credentials(ws: Workspace) -> tuple[str, str]:
    cfg = _mcp(ws)
    user = os.environ.get(str(cfg.get("airflow_user_env") or ""), "") or "admin"
    password = os.environ.get(str(cfg.get("airflow_password_env") or ""), "")
    if password:
        return user, password
    home = Path(os.environ.get("AIRFLOW_HOME") or ws.path(ws.section("airflow").get("home") or ".airflow"))
    generated = home / "simple_auth_manager_passwords.json.generated"
    try:
        return user, json.loads(generated.read_text(encoding="utf-8"))[user]
    except (OSError, ValueError, KeyError):
        raise RemoteError(f"no Airflow credentials: set {cfg.get('airflow_password_env')} (and "
                          f"{cfg.get('airflow_user_env')}), or run Airflow with `llmops airflow up` so that "
                          f"{generated} exists") from None


def _airflow(ws: Workspace, method: str, path: str, **kw) -> Any:
    base = airflow_url(ws)
    try:
        with httpx.Client(base_url=base, timeout=_timeout(ws)) as c:
            user, password = _airflow_credentials(ws)
            tok = c.post("/auth/token", json={"username": user, "password": password})
            if tok.status_code not in (200, 201):
                raise RemoteError(f"Airflow at {base} refused the login of '{user}' ({tok.status_code})")
            r = c.request(method, path, headers={"Authorization": f"Bearer {tok.json()['access_token']}"}, **kw)
    except httpx.HTTPError as exc:
        raise RemoteError(f"Airflow's API at {base} is not reachable ({exc.__class__.__name__}); start it with "
                          "`llmops airflow up`") from None
    if r.status_code >= 400:
        raise RemoteError(f"Airflow {method} {path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


def approval_url(base: str, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """Where a person answers the approval in Airflow's UI (the task instance's Required Actions tab)."""
    task = f"/tasks/{quote(task_id, safe='')}" + (f"/mapped/{map_index}" if map_index not in (None, -1) else "")
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}{task}/required_actions"


def pending_approvals(ws: Workspace) -> dict[str, Any]:
    """Every human-in-the-loop request that nobody has answered yet, across DAGs, with its Airflow UI URL."""
    data = _airflow(ws, "GET", "/api/v2/dags/~/dagRuns/~/hitlDetails",
                    params={"response_received": "false", "limit": 100})
    base = airflow_url(ws)
    out = []
    for d in data.get("hitl_details") or []:
        ti = d.get("task_instance") or {}
        dag_id, run_id, task_id = ti.get("dag_id"), ti.get("dag_run_id") or ti.get("run_id"), ti.get("task_id")
        out.append({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "subject": d.get("subject"),
                    "body": d.get("body"), "options": d.get("options"), "created_at": d.get("created_at"),
                    "url": approval_url(base, dag_id, run_id, task_id, ti.get("map_index"))})
    return {"airflow": base, "pending": out, "total": data.get("total_entries", len(out)),
            "note": "answer each one in Airflow's UI: approvals are never given through this API"}


def trigger_dag(ws: Workspace, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    run = _airflow(ws, "POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
                   json={"logical_date": None, "conf": conf, "note": conf.get("reason")})
    base = airflow_url(ws)
    return {"dag_id": dag_id, "run_id": run.get("dag_run_id"), "state": run.get("state"),
            "url": f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(str(run.get('dag_run_id')), safe='')}"}
