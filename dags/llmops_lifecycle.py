"""LLMOps lifecycle: the stages of dvc.yaml as Airflow tasks.

The task list and dependencies are read from dvc.yaml (never written twice), and each task runs
`dvc repro --single-item <stage>`, so Airflow runs exactly what `dvc repro` runs on a laptop, records the same
dvc.lock and skips stages whose inputs did not change. Every stage output is declared as an Asset, so
downstream DAGs (monitoring, serving) can be scheduled on it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pendulum
from airflow.sdk import Asset, dag, task

from llmops_airflow import DEFAULT_ARGS
from pipelines.orchestration.dvc_graph import load_stage_graph

REPO = Path(os.environ.get("LLMOPS_ROOT", Path(__file__).resolve().parents[1]))
# Stage commands (`dvc`, `llmops`) live next to the Python that runs Airflow.
VENV_BIN = str(Path(sys.executable).parent)


def _asset(path: str) -> Asset:
    return Asset(name=f"llmops/{path}", uri=(REPO / path).as_uri())


@dag(
    dag_id="llmops_lifecycle",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # One DVC repository, one writer: `dvc repro` holds the repo lock for the whole stage.
    max_active_tasks=1,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["llmops", "dvc"],
    doc_md=__doc__,
)
def llmops_lifecycle():
    tasks = {}
    for stage in load_stage_graph(REPO):

        @task.bash(
            task_id=stage.name,
            cwd=str(REPO),
            env={"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LLMOPS_ROOT": str(REPO)},
            append_env=True,
            outlets=[_asset(out) for out in stage.outs],
            doc_md=f"`{stage.cmd}` through DVC",
        )
        def run_stage(name: str = stage.name) -> str:
            return f"dvc repro --single-item {name}"

        tasks[stage.name] = run_stage()
    for stage in load_stage_graph(REPO):
        for upstream in stage.upstream:
            tasks[upstream] >> tasks[stage.name]


llmops_lifecycle()
