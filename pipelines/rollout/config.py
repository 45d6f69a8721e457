"""Typed `rollout:` section of params.yaml (see the comments there and docs/operations/rollout.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config import StageConfig
from pipelines.rollout.state import Step

RATE_METRICS = ("error_rate", "guard_block_rate", "negative_feedback_rate", "toxicity_rate", "pii_leak_rate",
                "ungrounded_rate")
QUANTILE_METRICS = ("latency_p95_ms", "ttft_p95_ms", "cost_per_1k_tokens")
METRICS = RATE_METRICS + QUANTILE_METRICS


class StepConfig(StageConfig):
    share: float = Field(gt=0, le=1)  # challenger share of sticky keys during the step
    min_duration_s: float = Field(ge=0)
    min_requests: int = Field(ge=0)  # challenger requests served in this step
    min_rated: int = Field(ge=0)  # challenger requests rated (feedback) in this step

    def step(self) -> Step:
        return Step(share=self.share, min_duration_s=self.min_duration_s, min_requests=self.min_requests,
                    min_rated=self.min_rated)


class ShadowConfig(StageConfig):
    min_duration_s: float = Field(ge=0)
    min_requests: int = Field(ge=0)  # shadow answers logged

    def step(self) -> Step:
        return Step(share=0.0, min_duration_s=self.min_duration_s, min_requests=self.min_requests, min_rated=0)


class AnalysisConfig(StageConfig):
    request_log: str  # a JSONL file (rotated files read too), a folder of per-replica files, or s3://bucket/prefix
    feedback_log: str  # same forms; joined to requests by request_id
    max_window_hours: float = Field(gt=0)  # data before max(rollout start, now - this) is not read
    alpha: float = Field(gt=0, lt=0.5)  # false-rollback bound over all guardrails together (Bonferroni split)
    alpha_noninferiority: float = Field(gt=0, lt=0.5)  # bound on advancing a challenger worse than a margin
    min_requests: int = Field(ge=1)  # per arm, for request metrics; fewer: insufficient_data for that metric
    min_rated: int = Field(ge=1)  # per arm, for negative_feedback_rate
    min_scored: int = Field(ge=1)  # per arm, for toxicity / PII / groundedness (online-eval scored requests)
    tuned_n: int = Field(ge=1)  # the normal-mixture boundary is tightest near this many observations per arm
    guardrails: dict[str, float]  # metric -> rollback when challenger - champion is surely above this
    success: dict[str, float]  # metric -> non-inferiority margin: advance only when surely below it
    min_shadow_agreement: float | None = Field(ge=0, le=1)  # shadow: success needs agreement surely above; null: reported only
    agreement_threshold: float = Field(gt=0, le=1)  # a shadow answer "agrees" at this token-F1 with the champion's
    eval_sample_rate: float = Field(gt=0, le=1)  # share of requests scored for toxicity/PII/groundedness (by request_id hash)

    @field_validator("guardrails", "success")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("margins must be >= 0 (rates: absolute difference; latency/cost: relative increase)")
        return value


class RolloutConfig(StageConfig):
    strategy: Literal["direct", "canary", "shadow"]
    state_path: str  # the rollout state every serving replica reads (a path or s3://bucket/key)
    state_poll_s: float = Field(gt=0)  # s3:// state: a replica re-checks the ETag at most this often
    steps: list[StepConfig]
    shadow: ShadowConfig
    final_approval: bool  # a person approves (Airflow HITL) before the challenger takes 100%
    choose_strategy: bool  # the promotion approval becomes a choice among direct, canary and shadow
    schedule: str | float  # the llmops_rollout DAG's analysis: a cron (UTC), or every this many seconds
    decisions_dir: str  # one decision record per analysis (JSON), plus latest.json
    analysis: AnalysisConfig

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | float) -> str | float:
        if isinstance(value, str):
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(f"not a cron expression: {value!r} (or give a number of seconds)")
        elif value <= 0:
            raise ValueError("a schedule in seconds must be > 0")
        return value

    @model_validator(mode="after")
    def _steps(self) -> RolloutConfig:
        if not self.steps:
            raise ValueError("rollout.steps needs at least one step")
        shares = [s.share for s in self.steps]
        if shares != sorted(shares) or len(set(shares)) != len(shares):
            raise ValueError(f"rollout.steps shares must increase strictly, got {shares}")
        return self

    def steps_for(self, strategy: str) -> list[Step]:
        if strategy == "canary":
            return [s.step() for s in self.steps]
        if strategy == "shadow":
            return [self.shadow.step()]
        raise ValueError(f"a {strategy!r} deploy has no rollout steps")


def load_rollout_config(params=None) -> RolloutConfig:
    from pipelines.config import load_params, parse_section

    loaded = params if isinstance(params, dict) else load_params(params)
    return parse_section(loaded, "rollout", RolloutConfig)
