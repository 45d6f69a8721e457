"""The LLMOps Airflow plugin: a page in the Airflow UI (nav entry "LLMOps") with the registry's champion and
challenger, the latest gate decision and deployment, drift status, retrains and data approvals.

Airflow 3 plugins mount a FastAPI app into the API server (`fastapi_apps`) and link it into the UI
(`external_views`, shown inside the UI at /plugin/llmops). The page content comes from
pipelines/orchestration/status.py; only the pending approvals (HITL details without an answer) come from Airflow's
own database, which only this process can read.
"""
from __future__ import annotations


from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from llmops_airflow.assets import REPO

app = FastAPI(title="LLMOps status", description="Champion, challenger, gate, drift and approvals")


def pending_approvals() -> list[dict]:
    try:
        from airflow.models.hitl import HITLDetail
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.query(HITLDetail).filter(HITLDetail.chosen_options.is_(None)).all()
            return [{"dag_id": r.task_instance.dag_id, "run_id": r.task_instance.run_id,
                     "task_id": r.task_instance.task_id, "subject": r.subject} for r in rows]
    except Exception as exc:  # the page must render even when the DB is busy
        return [{"dag_id": "?", "run_id": "?", "task_id": "?", "subject": f"approvals unavailable: {exc}"}]


@app.get("/", response_class=HTMLResponse)
def status_page() -> str:
    from pipelines.orchestration.status import collect, render_status

    return render_status(collect(REPO), pending_approvals())


@app.get("/api/status")
def status_json() -> JSONResponse:
    from pipelines.orchestration.status import collect

    return JSONResponse({**collect(REPO), "pending_approvals": pending_approvals()})


@app.get("/reports/{name}")
def report(name: str) -> FileResponse:
    """The HTML reports the stages and monitor runs write (linked from approvals and this page)."""
    for folder in (REPO / "reports", *sorted((REPO / "reports" / "monitor").glob("*"))):
        path = (folder / name).resolve()
        if path.parent == folder.resolve() and path.suffix == ".html" and path.is_file():
            return FileResponse(path)
    raise HTTPException(status_code=404, detail=f"no report {name}")


class LLMOpsPlugin(AirflowPlugin):
    name = "llmops"
    fastapi_apps = [{"app": app, "url_prefix": "/llmops", "name": "LLMOps status"}]
    external_views = [{"name": "LLMOps", "href": "/llmops/", "destination": "nav", "url_route": "llmops",
                       "category": "browse"}]
