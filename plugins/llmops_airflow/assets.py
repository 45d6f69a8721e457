"""The Assets the LLMOps DAGs share, named once: the landing inbox (with its watcher), approved landed data, drift
and monitoring alerts, the deployed champion and a deployed challenger (a rollout started). Producer and consumer
DAGs import them from here, so a name cannot drift between files.

Parse-time cost: reading params.yaml (a small file); no connection, no heavy import.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from airflow.sdk import Asset, AssetWatcher

REPO = Path(os.environ.get("LLMOPS_ROOT", Path(__file__).resolve().parents[2]))


def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def _path(p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else REPO / p


def stage_asset(path: str) -> Asset:
    """A DVC stage output (or input) as an Asset: the lineage and Asset graph of the lifecycle DAG. A path that is
    one of the named Assets below is that Asset (Airflow deactivates two Assets with one URI)."""
    uri = _path(path).as_uri()
    return _BY_URI.get(uri) or Asset(name=f"llmops/{path}", uri=uri)


def _landing_watcher(landing: dict) -> AssetWatcher:
    if landing.get("s3_inbox"):
        from llmops_airflow.triggers import S3FlagTrigger

        trigger = S3FlagTrigger(uri=landing["s3_inbox"], flag=landing["flag_file"],
                                poke_interval=float(landing["poke_interval_s"]))
    else:
        from airflow.providers.standard.triggers.file import DirectoryFileDeleteTrigger

        trigger = DirectoryFileDeleteTrigger(directory=str(_path(landing["inbox"])), filename=landing["flag_file"],
                                             poke_interval=float(landing["poke_interval_s"]))
    return AssetWatcher(name="llmops_landing_ready", trigger=trigger)


_LANDING = params()["landing"]

# Fires when a producer writes the flag file into the inbox (the trigger deletes the flag).
LANDING_INBOX = Asset(name="llmops/landing_inbox", uri=_path(_LANDING["inbox"]).as_uri(),
                      watchers=[_landing_watcher(_LANDING)])
# Approved batches moved into the landed folder; the event's extra lists their files and rows.
LANDED_DATA = Asset(name="llmops/landed_data", uri=_path(_LANDING["landed_dir"]).as_uri())
# A monitor window drifted from the training reference; the event's extra carries the report summary.
DRIFT_DETECTED = Asset(name="llmops/drift_detected", uri=(REPO / "reports" / "monitor" / "drift").as_uri())
# Online evaluation crossed a threshold (toxicity, PII leak, guard blocks, groundedness).
MONITOR_ALERT = Asset(name="llmops/monitor_alert", uri=(REPO / "reports" / "monitor" / "alerts").as_uri())
# The champion alias moved and the serving layer answers with it.
DEPLOYED_MODEL = Asset(name="llmops/deployed_model", uri=(REPO / "reports" / "deployment.json").as_uri())

# A canary or shadow rollout started: promote moved the `challenger` alias (the champion did not move); the
# llmops_rollout DAG is scheduled on it (and on its cron). The event's extra names the rollout and the versions.
CHALLENGER_DEPLOYED = Asset(name="llmops/challenger_deployed",
                            uri=(REPO / "reports" / "rollout" / "challenger_deployed").as_uri())



def _feedback_volume(flywheel: dict) -> Asset | None:
    """The feedback log as an Asset whose watcher fires once `min_feedback_lines` new ratings wait (the
    llmops_flywheel DAG's volume trigger); None when `flywheel.volume_check_s` is null (cron only)."""
    if flywheel.get("volume_check_s") is None:
        return None
    from llmops_airflow.triggers import FeedbackVolumeTrigger

    log = flywheel["feedback_log"]
    uri = log if "://" in log else _path(log).as_uri()
    trigger = FeedbackVolumeTrigger(min_lines=int(flywheel["min_feedback_lines"]),
                                    poke_interval=float(flywheel["volume_check_s"]))
    return Asset(name="llmops/feedback_volume", uri=uri,
                 watchers=[AssetWatcher(name="llmops_feedback_volume", trigger=trigger)])


FEEDBACK_VOLUME = _feedback_volume(params()["flywheel"])

_BY_URI = {a.uri: a for a in (LANDING_INBOX, LANDED_DATA, DRIFT_DETECTED, MONITOR_ALERT, DEPLOYED_MODEL,
                              CHALLENGER_DEPLOYED, FEEDBACK_VOLUME) if a is not None}
