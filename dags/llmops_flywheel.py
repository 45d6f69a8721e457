"""llmops_flywheel: rated production answers -> a landing batch, on a cron and on feedback volume.

Scheduled on `flywheel.schedule` (a cron, UTC) and on feedback volume: the `llmops/feedback_volume` Asset's
watcher (llmops_airflow.triggers.FeedbackVolumeTrigger, every `flywheel.volume_check_s`) fires once
`flywheel.min_feedback_lines` ratings wait that no batch took yet (after a run that saw them and wrote nothing,
once as many more came). Each run harvests the window ending now
(pipelines/flywheel/harvest.py): rated interactions of keys that consented to training use, with the exclusions
(guard-blocked, non-200, shadow, answer PII, injection, near-duplicates of the corpus) and the poisoning bounds
(records per key, distinct keys), after the last written batch's window (its report's `harvested_until`: ratings
are never harvested twice). A window with fewer than `flywheel.min_feedback_lines` feedback lines harvests nothing
and the run is skipped. A written batch lands in the landing inbox with its flag file
last; the ingest DAG's AssetWatcher fires on it, a person approves the new sources (licence: the consent policy,
and a PII summary), and the lifecycle takes over. The harvest report is `flywheel.report`. This file only wires.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from llmops_airflow import DEFAULT_ARGS
from llmops_airflow.assets import FEEDBACK_VOLUME, params

CRON = CronTriggerTimetable(params()["flywheel"]["schedule"], timezone="UTC")
SCHEDULE = CRON if FEEDBACK_VOLUME is None else AssetOrTimeSchedule(timetable=CRON, assets=FEEDBACK_VOLUME)


@dag(
    dag_id="llmops_flywheel",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one harvest at a time: two would write one window twice
    default_args=DEFAULT_ARGS,
    tags=["llmops", "flywheel"],
    doc_md=__doc__,
)
def llmops_flywheel():
    @task
    def harvest() -> dict:
        from airflow.exceptions import AirflowSkipException

        from pipelines.flywheel.harvest import run

        report = run()
        print(f"[llmops] flywheel: {report['lines']} feedback lines, {report['harvested']} harvested, "
              f"excluded {report['excluded']}, records {report['records']}, written {report['written']}"
              + (f" ({report['reason']})" if report["reason"] else ""))
        if report["skipped"]:
            raise AirflowSkipException(report["reason"])
        return {k: report[k] for k in ("batch", "written", "reason", "records", "sources")}

    harvest()


llmops_flywheel()
