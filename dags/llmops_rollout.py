"""llmops_rollout: one look at the running canary or shadow rollout per run, then advance, hold or roll back.

Scheduled on `llmops/challenger_deployed` (the lifecycle's hand-over after promote started a rollout) or on its own
clock (`rollout.schedule` in params.yaml: a cron, or every N seconds). Each run:
1. `analyze`: the online analysis of the rollout's window (pipelines/rollout/analysis.py: per-arm metrics from the
   request and feedback logs of every replica, anytime-valid sequential decisions), written as a decision record;
   no rollout running: the run is skipped;
2. `apply_decision`: the decision applied (pipelines/rollout/lifecycle.py): next step, hold (insufficient data, or
   not yet non-inferior), rollback (a guardrail surely worse: the challenger alias is removed at once), complete
   (the champion alias moves to the challenger).
With `rollout.final_approval`, a decision that would take the challenger to 100% first waits for a person
(`approve_full_traffic`, Airflow HITL) who sees the per-arm table with its intervals; `apply_answer` then takes a
fresh look and applies it with the approval (or holds on Reject). One run at a time: a waiting approval holds the
rollout at its step. The logic is pipelines/orchestration/rollout_run.py and pipelines/rollout; this file wires it.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable, DeltaTriggerTimetable

from llmops_airflow import DEFAULT_ARGS
from llmops_airflow.assets import CHALLENGER_DEPLOYED, params

ROLLOUT = params()["rollout"]
SCHEDULE = ROLLOUT["schedule"]
FINAL_APPROVAL = bool(ROLLOUT["final_approval"])
CLOCK = (CronTriggerTimetable(SCHEDULE, timezone="UTC") if isinstance(SCHEDULE, str)
         else DeltaTriggerTimetable(timedelta(seconds=float(SCHEDULE))))


@dag(
    dag_id="llmops_rollout",
    schedule=AssetOrTimeSchedule(timetable=CLOCK, assets=CHALLENGER_DEPLOYED),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one look at a time: two applies on one state would race (lifecycle.apply refuses stale)
    default_args={**DEFAULT_ARGS, "retry_delay": timedelta(seconds=10)},
    tags=["llmops", "rollout"],
    doc_md=__doc__,
)
def llmops_rollout():
    @task
    def analyze() -> dict:
        from airflow.exceptions import AirflowSkipException

        from pipelines.orchestration.rollout_run import analyze

        look = analyze()
        print(f"[llmops] rollout {look['rollout_id']}: {look['decision']}: {'; '.join(look['reasons'])}")
        if look["decision"] == "noop":
            raise AirflowSkipException("; ".join(look["reasons"]))
        return look

    @task
    def apply_decision(look: dict) -> dict:
        from pipelines.orchestration.rollout_run import apply_recorded

        applied = apply_recorded(look["record"], by="airflow")
        print(f"[llmops] applied: {applied}")
        return applied

    look = analyze()
    if not FINAL_APPROVAL:
        apply_decision(look)
        return

    @task.branch
    def route(look: dict) -> str:
        return "approve_full_traffic" if look["approval_required"] else "apply_decision"

    approve = HITLOperator(
        task_id="approve_full_traffic",
        subject="Take version {{ ti.xcom_pull(task_ids='analyze')['challenger_version'] }} to 100% of traffic? "
                "(rollout {{ ti.xcom_pull(task_ids='analyze')['rollout_id'] }})",
        body="{{ ti.xcom_pull(task_ids='analyze')['body'] }}",
        options=["Approve", "Reject"],
        response_timeout=timedelta(hours=12),  # no answer: the task fails, nothing moves, the next look asks again
    )

    @task
    def apply_answer(look: dict, *, ti) -> dict:
        from pipelines.orchestration.rollout_run import apply_answer

        answer = ti.xcom_pull(task_ids="approve_full_traffic") or {}
        user = answer.get("responded_by_user") or {}
        by = f"hitl:{user.get('name') or user.get('id') or 'unknown'}"
        applied = apply_answer(look["record"], approved=answer.get("chosen_options") == ["Approve"], by=by)
        print(f"[llmops] {by} answered {answer.get('chosen_options')}: {applied}")
        return applied

    route(look) >> [approve, apply_decision(look)]
    approve >> apply_answer(look)


llmops_rollout()
