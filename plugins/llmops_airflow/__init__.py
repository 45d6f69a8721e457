"""Shared Airflow wiring for the LLMOps DAGs: default args and the failure log line. Airflow puts `plugins/` on
sys.path, so DAG files import this without installing anything."""
from __future__ import annotations

from datetime import timedelta


def log_stage_failure(context) -> None:
    """Point the person on call at the stage's own message: gates print what failed and where the report is."""
    ti = context.get("task_instance")
    print(f"[llmops] stage '{getattr(ti, 'task_id', '?')}' failed; see its log above for the gate's summary")


# Stages are deterministic: a failed gate fails the same way on retry, so one retry is only for infrastructure.
DEFAULT_ARGS = {
    "owner": "llmops",
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
    "on_failure_callback": log_stage_failure,
}
