"""llmops_lifecycle: the stages of dvc.yaml as Airflow tasks, retraining when new data has drifted.

The task list and dependencies are read from dvc.yaml (never written twice), and each stage task runs
`dvc repro --single-item <stage>`, so Airflow runs exactly what `dvc repro` runs on a laptop, records the same
dvc.lock and skips stages whose inputs did not change. Every stage's inputs and outputs are Assets (inlets and
outlets), which is also the lineage OpenLineage reports.

Scheduled on `llmops/landed_data & llmops/drift_detected`: a retrain needs new data AND drift (a same-distribution
batch lands and waits; retraining without new data changes nothing). A person can still trigger it by hand.
Around the stages:
- `retrain_policy` first: a cooldown and a daily cap (`retrain` in params.yaml) stop a drift storm; a refused run
  skips everything.
- `approve_promotion` between gate and promote when `retrain.promotion_approval` is true (Airflow HITL): the
  approver sees the gate decision and the evaluation report link.
- With `rollout.choose_strategy`, that approval is a choice among direct, canary and shadow (HITL): the approver
  sees the gate's evidence and a cost estimate of each strategy; the choice is recorded against the candidate
  (pipelines/rollout/choice.py) and promote starts the rollout with it. Reject skips promote.
- `deploy` after promote (direct): the serving layer is told to reload and must answer with the new champion; if
  it does not, the alias moves back to the previous champion (`llmops rollback` does the same by hand).
- `hand_over_to_rollout` after promote (canary, shadow): promote moved only the `challenger` alias; this emits
  `llmops/challenger_deployed`, and the llmops_rollout DAG decides from live evidence when the champion moves.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator
from airflow.sdk import dag, task

from llmops_airflow import DEFAULT_ARGS
from llmops_airflow.assets import (CHALLENGER_DEPLOYED, DEPLOYED_MODEL, DRIFT_DETECTED, LANDED_DATA, REPO, params,
                                   stage_asset)
from pipelines.orchestration.dvc_graph import load_stage_graph

# Stage commands (`dvc`, `llmops`) live next to the Python that runs Airflow.
VENV_BIN = str(Path(sys.executable).parent)
STAGE_ENV = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LLMOPS_ROOT": str(REPO)}
PROMOTION_APPROVAL = bool(params()["retrain"]["promotion_approval"])
CHOOSE_STRATEGY = bool(params()["rollout"]["choose_strategy"])  # the approval becomes a choice of deploy strategy
STRATEGIES = ("direct", "canary", "shadow")


@dag(
    dag_id="llmops_lifecycle",
    schedule=(LANDED_DATA & DRIFT_DETECTED),
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
    @task.short_circuit
    def retrain_policy(*, dag_run, run_id, triggering_asset_events) -> bool:
        from pipelines.config import load_section
        from pipelines.orchestration.retrain_policy import RetrainConfig, decide

        trigger = {str(getattr(asset, "name", asset)): [ev.extra for ev in events]
                   for asset, events in triggering_asset_events.items()}
        if dag_run.run_type == "manual":  # a person asked for it: the policy only records it
            trigger["manual"] = True
        decision = decide(load_section("retrain", RetrainConfig), run_id=run_id, at=dag_run.run_after,
                          trigger=trigger)
        print(f"[llmops] retrain policy: {'allowed' if decision['allowed'] else 'refused'}: {decision['reason']}")
        return decision["allowed"] or dag_run.run_type == "manual"

    policy = retrain_policy()
    tasks = {}
    graph = load_stage_graph(REPO)
    for stage in graph:

        @task.bash(
            task_id=stage.name,
            cwd=str(REPO),
            env=STAGE_ENV,
            append_env=True,
            inlets=[stage_asset(dep) for dep in stage.deps if not dep.startswith("pipelines/")],
            outlets=[stage_asset(out) for out in stage.outs],
            doc_md=f"`{stage.cmd}` through DVC",
        )
        def run_stage(name: str = stage.name) -> str:
            return f"dvc repro --single-item {name}"

        tasks[stage.name] = run_stage()
    for stage in graph:
        for upstream in stage.upstream:
            tasks[upstream] >> tasks[stage.name]
        if not stage.upstream:
            policy >> tasks[stage.name]

    if CHOOSE_STRATEGY and {"gate", "promote"} <= tasks.keys():

        @task
        def gate_summary() -> dict:
            from pipelines.orchestration.rollout_run import strategy_choice

            return strategy_choice()

        choice = HITLBranchOperator(
            task_id="approve_promotion",
            subject="Promote {{ ti.xcom_pull(task_ids='gate_summary')['candidate'] }}, and how? Gate: "
                    "{{ ti.xcom_pull(task_ids='gate_summary')['decision'] }}",
            body="{{ ti.xcom_pull(task_ids='gate_summary')['body'] }}",
            options=[*STRATEGIES, "Reject"],
            options_mapping={**{s: "record_strategy" for s in STRATEGIES}, "Reject": "promotion_rejected"},
            response_timeout=timedelta(days=2),
        )

        @task
        def record_strategy(summary: dict, *, ti) -> str:
            from pipelines.orchestration.rollout_run import record_strategy

            answer = ti.xcom_pull(task_ids="approve_promotion") or {}
            user = answer.get("responded_by_user") or {}
            strategy = (answer.get("chosen_options") or [None])[0]
            return record_strategy(strategy, by=f"hitl:{user.get('name') or user.get('id') or 'unknown'}",
                                   candidate_sha256=summary["candidate_sha256"], estimate=summary.get("estimate"))

        summary = gate_summary()
        recorded = record_strategy(summary)
        tasks["gate"] >> summary >> choice >> [recorded, EmptyOperator(task_id="promotion_rejected")]
        recorded >> tasks["promote"]
    elif PROMOTION_APPROVAL and {"gate", "promote"} <= tasks.keys():

        @task
        def gate_summary() -> dict:
            from pipelines.orchestration.deploy import gate_summary

            return gate_summary()

        approval = ApprovalOperator(
            task_id="approve_promotion",
            subject="Promote {{ ti.xcom_pull(task_ids='gate_summary')['candidate'] }}? Gate: "
                    "{{ ti.xcom_pull(task_ids='gate_summary')['decision'] }}",
            body="{{ ti.xcom_pull(task_ids='gate_summary')['body'] }}",
            response_timeout=timedelta(days=2),
        )
        summary = gate_summary()
        tasks["gate"] >> summary >> approval >> tasks["promote"]

    if "promote" in tasks:

        @task(outlets=[DEPLOYED_MODEL], retries=0)  # a retry after a rollback would "deploy" the old champion
        def deploy(*, outlet_events) -> dict:
            """The servers must answer with the new champion; if one keeps serving another version, the alias
            moves back to the previous champion (the rollback path) and the task fails, saying so. Skipped when
            promote started a canary or shadow rollout (the champion did not move)."""
            from airflow.exceptions import AirflowSkipException

            from pipelines.orchestration.deploy import deploy_champion, rollback_champion
            from pipelines.orchestration.rollout_run import promoted_strategy

            promoted = promoted_strategy()
            if promoted["strategy"] != "direct":
                raise AirflowSkipException(f"{promoted['strategy']} rollout {promoted['rollout_id']}: handed over")
            try:
                report = deploy_champion()
            except RuntimeError as exc:
                rolled = rollback_champion(reason=str(exc))
                raise RuntimeError(f"{exc}; rolled back: {rolled}") from exc
            outlet_events[DEPLOYED_MODEL].extra = {k: report[k] for k in ("version", "status", "servers")}
            return dict(report)

        @task(outlets=[CHALLENGER_DEPLOYED])
        def hand_over_to_rollout(*, outlet_events) -> dict:
            """Canary or shadow: the rollout promote started is llmops_rollout's from here (this Asset event
            schedules it). Skipped for a direct promotion."""
            from airflow.exceptions import AirflowSkipException

            from pipelines.orchestration.rollout_run import promoted_strategy

            promoted = promoted_strategy()
            if promoted["strategy"] == "direct":
                raise AirflowSkipException(f"direct promotion of version {promoted['version']}: deploy")
            outlet_events[CHALLENGER_DEPLOYED].extra = promoted
            return promoted

        tasks["promote"] >> [deploy(), hand_over_to_rollout()]


llmops_lifecycle()
