"""llmops_ingest: new data in the landing inbox -> checked -> approved by a person when its source is new -> landed.

Triggered by the `llmops/landing_inbox` Asset's watcher (Airflow 3 event-driven scheduling: a file trigger on the
producer's `_READY` flag, or an S3 flag by `landing.s3_inbox`). Corrupt files and sources without a licence are
refused into rejects with their reason; a new source waits on an ApprovalOperator that shows its licence and a PII
scan summary. Approved batches move into `data/landed/` and emit `llmops/landed_data`, which the monitor DAG and
the lifecycle DAG are scheduled on. The logic is pipelines/data/landing.py; this file only wires it.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import dag, task

from llmops_airflow import DEFAULT_ARGS
from llmops_airflow.assets import LANDED_DATA, LANDING_INBOX


def _landing_config():
    from pipelines.config import load_section
    from pipelines.data.landing import LandingConfig

    return load_section("landing", LandingConfig)


@dag(
    dag_id="llmops_ingest",
    schedule=[LANDING_INBOX],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one drop at a time: a drop's files are moved before the next scan
    default_args=DEFAULT_ARGS,
    tags=["llmops", "data"],
    doc_md=__doc__,
)
def llmops_ingest():
    @task
    def scan_inbox() -> dict:
        from pipelines.data.landing import pull_s3_inbox, scan_inbox

        cfg = _landing_config()
        pull_s3_inbox(cfg)
        return dict(scan_inbox(cfg))

    @task.branch
    def route(scan: dict) -> str:
        return "approve_new_sources" if scan["needs_approval"] else "no_approval_needed"

    approve = ApprovalOperator(
        task_id="approve_new_sources",
        subject="Approve new data source(s) for the training corpus: "
                "{{ ti.xcom_pull(task_ids='scan_inbox')['needs_approval'] | join(', ') }}",
        body="{{ ti.xcom_pull(task_ids='scan_inbox')['approval_body'] }}",
        response_timeout=timedelta(days=7),
    )
    approved = EmptyOperator(task_id="approved")  # skipped on "Reject": land_batches then refuses the new sources
    known_sources_only = EmptyOperator(task_id="no_approval_needed")

    @task(outlets=[LANDED_DATA], trigger_rule="none_failed")
    def land_batches(scan: dict, *, outlet_events, ti, run_id) -> dict:
        from airflow.exceptions import AirflowSkipException

        from pipelines.data.landing import accept, reject

        cfg = _landing_config()
        decision = ti.xcom_pull(task_ids="approve_new_sources") or {}
        chosen = decision.get("chosen_options") or []
        user = (decision.get("responded_by_user") or decision.get("responded_by") or {}).get("name")
        new = list(scan["needs_approval"])
        if new and chosen != ["Approve"]:
            refused = [{"source": b["source"], "file": f, "reason": f"source not approved ({chosen or 'no answer'})"}
                       for b in scan["batches"] if b["source"] in new for f in b["files"]]
            reject(cfg, refused, run_id)
        report = accept(cfg, scan, run_id=run_id, approved_by=user,
                        approved_sources=new if chosen == ["Approve"] else [])
        if not report["accepted"]:
            raise AirflowSkipException(f"nothing landed; refused: {report['refused']}")
        outlet_events[LANDED_DATA].extra = {
            "files": [f for a in report["accepted"] for f in a["files"]],
            "rows": report["rows"], "sources": [a["source"] for a in report["accepted"]], "run_id": run_id}
        return dict(report)

    scan = scan_inbox()
    land = land_batches(scan)
    route(scan) >> [approve, known_sources_only]
    approve >> approved >> land
    known_sources_only >> land


llmops_ingest()
