"""llmops_monitor: drift of new data and of live prompts against the training reference, plus online evaluation of
live traffic; on drift it emits the `llmops/drift_detected` Asset event (the report summary as its extra), which
the lifecycle DAG is scheduled on.

Runs on its cron (`monitor.schedule` in params.yaml) and whenever an approved batch lands (`llmops/landed_data`):
the window is the batches named by the triggering Asset events (never "whatever is latest") plus the request log
inside the run's time window. The logic is pipelines/monitoring and pipelines/stages/drift.py; this file wires it.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from llmops_airflow import DEFAULT_ARGS
from llmops_airflow.assets import DRIFT_DETECTED, LANDED_DATA, MONITOR_ALERT, params

SCHEDULE = params()["monitor"]["schedule"]


@dag(
    dag_id="llmops_monitor",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(SCHEDULE, timezone="UTC"), assets=LANDED_DATA),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["llmops", "monitoring"],
    doc_md=__doc__,
)
def llmops_monitor():
    @task
    def collect_window(*, triggering_asset_events, dag_run, run_id) -> dict:
        from pipelines.orchestration.monitor_run import collect_window

        files = [f for events in triggering_asset_events.values() for ev in events
                 for f in (ev.extra or {}).get("files", [])]
        return dict(collect_window(run_id=run_id, until=dag_run.run_after, landed_files=files))

    @task
    def data_drift(window: dict) -> dict:
        from pipelines.monitor import data_drift

        return dict(data_drift(window))

    @task
    def prompt_drift(window: dict) -> dict:
        from pipelines.monitor import prompt_drift

        return dict(prompt_drift(window))

    @task
    def online_evaluation(window: dict) -> dict:
        from pipelines.monitor import online_evaluation

        return dict(online_evaluation(window))

    @task(outlets=[DRIFT_DETECTED])
    def emit_drift(data: dict, prompts: dict, *, outlet_events) -> dict:
        from airflow.exceptions import AirflowSkipException

        drifted = {name: r for name, r in (("data", data), ("prompts", prompts)) if r.get("drifted")}
        if not drifted:
            raise AirflowSkipException(f"no drift: data {data.get('status')}, prompts {prompts.get('status')}")
        outlet_events[DRIFT_DETECTED].extra = {name: r.get("summary", {}) for name, r in drifted.items()}
        return drifted

    @task(outlets=[MONITOR_ALERT])
    def emit_alerts(online: dict, *, outlet_events) -> list:
        from airflow.exceptions import AirflowSkipException

        if not online.get("alerts"):
            raise AirflowSkipException(f"online evaluation: no alert ({online.get('status')})")
        outlet_events[MONITOR_ALERT].extra = {"alerts": online["alerts"], "report": online.get("report")}
        return online["alerts"]

    window = collect_window()
    emit_drift(data_drift(window), prompt_drift(window))
    emit_alerts(online_evaluation(window))


llmops_monitor()
