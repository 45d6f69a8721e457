"""The `flywheel` section of params.yaml: how rated production answers become a landing batch (pipelines/flywheel)."""
from __future__ import annotations

from pydantic import Field

from pipelines.config import StageConfig


class FlywheelConfig(StageConfig):
    request_log: str  # serving's request log: a file (+ rotated siblings), a folder of per-replica *.jsonl, or s3://
    feedback_log: str  # the feedback log, same forms
    schedule: str  # the llmops_flywheel DAG's cron (UTC)
    min_feedback_lines: int = Field(ge=0)  # feedback volume: fewer lines in the window -> nothing harvested (yet)
    # the DAG's feedback-volume watcher counts new ratings this often and fires at min_feedback_lines; null: cron only
    volume_check_s: float | None = Field(gt=0)
    window_hours: float = Field(gt=0)  # feedback given in [until - window_hours, until) is harvested
    request_lookback_hours: float = Field(ge=0)  # a rated request may be this much older than the window's start
    keys_file: str | None  # the API keys file (training_use consent); null: $LLMOPS_API_KEYS_FILE
    inbox: str | None  # the landing inbox the batch is written to; null: landing.inbox
    source_prefix: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # sources <prefix>_sft and <prefix>_preference
    licence: str  # the batch's licence: names the consent policy (approval shows it)
    good_stars: int = Field(ge=1, le=5)  # a stars rating >= this (or thumbs +1) makes the answer an SFT record
    max_records_per_key: int = Field(ge=1)  # poisoning bound: records one key may contribute to one batch
    min_distinct_keys: int = Field(ge=1)  # poisoning bound: fewer contributing keys -> nothing is written
    corpus_dir: str  # the curated corpus: a record near-duplicating one of its texts is excluded
    guard_models_dir: str | None  # injection detector (train_guard's models); null: serve.guard.models_dir
    require_injection_detector: bool  # true: refuse to harvest without it; false: the guard's rules only (reported)
    report: str  # the harvest report (JSON)



def load(params=None, **overrides) -> tuple[FlywheelConfig, str, str]:
    """(the flywheel section with `overrides`, the inbox, the flag file): the inbox defaults to landing.inbox and
    the flag file is always landing.flag_file (the one the ingest DAG's AssetWatcher waits for)."""
    from pipelines.config import config_from_params
    from pipelines.data.landing import LandingConfig

    cfg = config_from_params("flywheel", FlywheelConfig, overrides, params)
    landing = config_from_params("landing", LandingConfig, {}, params)
    return cfg, cfg.inbox or landing.inbox, landing.flag_file
