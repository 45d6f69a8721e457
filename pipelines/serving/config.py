"""The `serve` section of params.yaml (every key required; which model is served comes from the `registry` section)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.cost.prices import PriceTable
from pipelines.security.guard import GuardConfig


class BatchingConfig(StageConfig):
    # continuous: greedy requests share forward passes in transformers' ContinuousBatchingManager;
    # naive: one request at a time under a lock (the baseline the benchmark compares against)
    mode: Literal["continuous", "naive"]
    num_blocks: int = Field(ge=1)  # KV-cache blocks; size it explicitly (the default sizes it from system RAM)
    max_batch_tokens: int = Field(ge=16)  # tokens per forward pass (prefill chunks + one per decoding request)
    # the one-at-a-time path (penalties, JSON, logprobs...) waits up to this long before each token while batched
    # requests generate, so that the batch keeps the CPU; 0: both paths compete as equals
    unbatched_pause_ms: float = Field(ge=0)


class CacheConfig(StageConfig):
    max_entries: int = Field(ge=0)  # exact-match response cache for greedy requests (LRU); 0: off


class LimitsConfig(StageConfig):
    max_body_bytes: int = Field(ge=256)  # 413 above
    max_prompt_tokens: int = Field(ge=1)  # 400 context_length_exceeded above
    max_tokens: int = Field(ge=1)  # the cap on a request's max_tokens: 400 above
    request_timeout_s: float = Field(gt=0)  # generation is cancelled and 504 returned past this
    max_concurrent: int = Field(ge=1)  # requests in flight at once; 503 with Retry-After above
    rate_limit_rps: float = Field(gt=0)  # per API key token bucket: refill rate (requests per second)
    rate_limit_burst: int = Field(ge=1)  # bucket size; 429 with Retry-After when empty
    feedback_rate_limit_rps: float = Field(gt=0)  # POST /v1/feedback: its own per-key bucket (refill, per second)
    feedback_rate_limit_burst: int = Field(ge=1)  # ... and size; 429 with Retry-After when empty


class AuthConfig(StageConfig):
    # Keys come from LLMOPS_API_KEYS_FILE (JSON, sha256 hashes) and/or LLMOPS_API_KEYS ("id:secret,..."), never
    # from the repo. With neither set: "open_on_loopback" serves without auth when bound to a loopback address
    # (local dev) and refuses to start on any other; "refuse" never starts without keys.
    no_keys: Literal["open_on_loopback", "refuse"]


class ChallengerConfig(StageConfig):
    alias: str  # the registry alias of the challenger (served when a version has it)
    traffic_share: float = Field(ge=0.0, le=1.0)  # share of API keys (sticky per key) routed to it


class ShadowConfig(StageConfig):
    # a shadow rollout (rollout state, pipelines/rollout/state.py): the challenger answers a copy of each chat
    # request after the champion's answer is sent, off the request path; never returned, logged with arm "shadow"
    queue_size: int = Field(ge=1)  # copies waiting for the challenger; a full queue drops the copy (counted)
    concurrency: int = Field(ge=1)  # shadow generations at once (they never take a serve.limits.max_concurrent slot)


class RagConfig(StageConfig):
    index_dir: str  # the embed stage's output (FAISS index + chunks); relative to the project root
    top_k: int = Field(ge=1)
    template: str  # a prompt template of pipelines/serving/prompts/ (its sha256 is recorded with each version)
    max_context_tokens: int = Field(ge=16)  # retrieved text budget (LM tokens) in the prompt


class EmbeddingsConfig(StageConfig):
    model_name: str  # the name /v1/models and /v1/embeddings answer to
    model_package: str  # the same offline package as embed.model_package


class RayServeConfig(StageConfig):
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(gt=0)
    upscale_delay_s: float = Field(ge=0)
    downscale_delay_s: float = Field(ge=0)
    look_back_period_s: float = Field(gt=0)  # ongoing requests are averaged over this window
    metrics_interval_s: float = Field(gt=0)  # how often replicas/handles push their ongoing-request counts
    num_cpus: float = Field(gt=0)  # CPUs reserved per replica


class ServeConfig(StageConfig):
    host: str
    port: int
    engine: Literal["uvicorn", "ray"]  # `llmops serve --engine` overrides
    max_new_tokens: int = Field(ge=1)  # a request's max_tokens when it names none
    reload_poll_s: float = Field(ge=0)  # how often the registry aliases are polled (0: only POST /admin/reload)
    request_log: str  # JSONL, one line per request (monitoring reads it); relative to the project root
    request_log_max_bytes: int = Field(ge=0)  # rotate to <path>.<n> above this size; 0: never
    feedback_log: str  # JSONL, one line per accepted POST /v1/feedback (pipelines.serving.feedback); rotated likewise
    feedback_lookup_files: int = Field(ge=1)  # newest request/feedback log files searched for a request another
    #                                           replica served (or an earlier duplicate)
    rollout_state: str  # the rollout state file (rollout.state_path) read per request: arm routing and shadow
    rollout_state_poll_s: float = Field(gt=0)  # s3:// state: re-checked at most this often (rollout.state_poll_s)
    shadow: ShadowConfig
    batching: BatchingConfig
    cache: CacheConfig
    limits: LimitsConfig
    auth: AuthConfig
    challenger: ChallengerConfig
    rag: RagConfig
    embeddings: EmbeddingsConfig
    cost: PriceTable  # params.yaml `cost`, aliased (serve.cost: *prices)
    ray: RayServeConfig
    guard: GuardConfig  # input/output policy (pipelines.security.guard)
