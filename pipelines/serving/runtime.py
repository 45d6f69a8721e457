"""What one API process holds and the request handling every endpoint shares.

`Runtime`: served versions (pipelines.serving.reload.Slots), keys and rate limits, the response cache, metrics,
the request log, the feedback log, the guard, RAG, the rollout state and the shadow queue; and the shared plumbing
of a request: `authorize` (key + rate limit), `read_json` and `parse` (body limits, OpenAI-style 400/413/422),
`admit`/`leave` (the concurrency bound), `route` (model name -> alias and rollout arm), `log_request` (Prometheus +
request log line). `Ctx` is one request's context. The routes (pipelines.serving.routes) reach the runtime through
`request.app.state.runtime` (`get_runtime`).

Arms: with a running rollout in the state file (`serve.rollout_state`, pipelines.rollout.state, re-read when it
changes, so a step or a rollback applies without a restart), a request for the plain model name goes to the
challenger when `assign_challenger(key id or `user`, rollout_id, share)` says so (sticky per key and rollout, the
same after a restart and on every replica), else to the champion; a shadow rollout serves everyone the champion and
queues a copy for the challenger (pipelines.serving.shadow). Only requests routed by a live rollout carry its
`rollout_id` (not `<model>:<alias>` requests, nor any while the challenger loaded is not the rollout's version).
Without a running rollout, `serve.challenger.traffic_share` is the manual share, as before.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from pipelines.models.registry import RegistryConfig, prompt_templates_sha256
from pipelines.rollout.state import RolloutState, RolloutStore, assign_challenger
from pipelines.security.guard import Guard
from pipelines.serving.auth import KeyStore, RateLimiter, is_loopback
from pipelines.serving.config import ServeConfig
from pipelines.serving.engine import Done, Engine, EngineDead
from pipelines.serving.errors import APIError
from pipelines.serving.feedback import FeedbackLog, RecentRequests
from pipelines.serving.metrics import Metrics
from pipelines.serving.rag import Rag
from pipelines.serving.reload import Served, Slots
from pipelines.serving.request_log import RequestLog, find_line
from pipelines.serving.schemas import ChatRequest

log = logging.getLogger("llmops.serve")

RAG_SUFFIX = "-rag"


def generation_error(exc: Exception, timeout: float) -> APIError:
    """The OpenAI-shaped error of a generation that raised, for every endpoint and for streams: past the request's
    timeout 504, the engine gone 503 (the client may retry), anything else 500 (logged with its traceback)."""
    if isinstance(exc, TimeoutError):
        return APIError(504, f"The request timed out after {timeout:g} s", "timeout")
    if isinstance(exc, EngineDead):
        return APIError(503, str(exc), "model_unavailable", headers={"Retry-After": "5"})
    log.error("generation failed", exc_info=exc)
    return APIError(500, f"generation failed: {exc}", "internal_error")


def _root_path(root: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else root / path


_instances = itertools.count(1)


def replica_name(n: int) -> str:
    """`hostname:pid`; a second app in the same process (tests, benchmarks) gets `#n` appended."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if n == 1 else f"{base}#{n}"


@dataclass
class Ctx:
    endpoint: str
    request_id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex[:20]}")
    t0: float = field(default_factory=time.perf_counter)
    key_id: str | None = None
    model: str | None = None
    alias: str | None = None
    version: str | None = None
    mode: str = "chat"
    prompt: str | None = None
    prompt_tokens: int | None = None
    contexts: list[dict] | None = None
    cpu_s: float | None = None  # the request's CPU-seconds (Metrics.cpu_share), set when its generation ends
    cost_usd: float | None = None
    pending_input: Any = None  # the guard's input detectors, left to run beside the prefill (parallel_input)
    arm: str | None = None  # "champion" | "challenger" | "shadow" (chat)
    rollout_id: str | None = None  # the running rollout that routed this request
    shadow_of: str | None = None  # shadow copies: the user-facing request id
    shadow: bool = False  # a shadow rollout runs: copy this request to the challenger once it is answered
    status: int | None = None  # the status logged for it (log_request)
    fallback: bool = False  # a challenger attempt that failed before a byte was sent, retried on the champion

    def ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def headers(self) -> dict[str, str]:
        h = {"x-request-id": self.request_id}
        if self.version:
            h["x-llmops-model-version"] = self.version
        if self.alias:
            h["x-llmops-alias"] = self.alias
        return h


class ResponseCache:
    """Exact-match LRU of greedy completions keyed by (version, prompt ids, max_tokens)."""

    def __init__(self, max_entries: int):
        self.max = max_entries
        self.items: OrderedDict[str, Done] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(version: str, ids: list[int], max_new: int) -> str:
        return hashlib.sha256(json.dumps([version, max_new, ids]).encode()).hexdigest()

    def get(self, key: str) -> Done | None:
        with self._lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
            return hit

    def put(self, key: str, done: Done) -> None:
        if self.max <= 0:
            return
        with self._lock:
            self.items[key] = done
            self.items.move_to_end(key)
            while len(self.items) > self.max:
                self.items.popitem(last=False)


class Runtime:
    """Everything one API process holds: served versions, keys, limits, cache, metrics, request log."""

    def __init__(self, cfg: ServeConfig, registry: RegistryConfig, root: Path | None = None,
                 keys: KeyStore | None = None):
        from pipelines.config import project_root

        self.cfg, self.registry = cfg, registry
        self.root = Path(root) if root else project_root()
        self.keys = keys if keys is not None else KeyStore.from_env()
        if self.keys.empty and (cfg.auth.no_keys == "refuse" or not is_loopback(cfg.host)):
            raise RuntimeError(
                "no API keys configured (set LLMOPS_API_KEYS_FILE or LLMOPS_API_KEYS); serving without auth is "
                f"only allowed on a loopback address with serve.auth.no_keys=open_on_loopback (host={cfg.host})")
        if self.keys.empty:
            log.warning("no API keys configured: serving WITHOUT authentication on %s (loopback only)", cfg.host)
        self.limiter = RateLimiter(cfg.limits.rate_limit_rps, cfg.limits.rate_limit_burst)
        self.feedback_limiter = RateLimiter(cfg.limits.feedback_rate_limit_rps, cfg.limits.feedback_rate_limit_burst)
        self.replica = replica_name(next(_instances))
        self.cache = ResponseCache(cfg.cache.max_entries)
        self.request_log = RequestLog(_root_path(self.root, cfg.request_log), cfg.request_log_max_bytes)
        self.feedback_log = FeedbackLog(_root_path(self.root, cfg.feedback_log), cfg.request_log_max_bytes,
                                        cfg.feedback_lookup_files)
        self.recent = RecentRequests()
        state_uri = cfg.rollout_state
        self.rollout = RolloutStore(state_uri if state_uri.startswith(("s3://", "s3a://")) else
                                    _root_path(self.root, state_uri), poll_s=cfg.rollout_state_poll_s)
        self._rollout_error: str | None = None
        b = cfg.batching
        aliases = [registry.alias] + ([cfg.challenger.alias] if cfg.challenger.alias != registry.alias else [])
        self.slots = Slots(registry, aliases, lambda loaded: Engine(loaded, b.mode, b.num_blocks,
                                                                   b.max_batch_tokens, b.unbatched_pause_ms),
                           on_change=self._models_changed)
        self.metrics = Metrics(cfg.cost.price_per_cpu_hour, cfg.cost.price_per_gpu_hour, self._occupancy)
        self.guard = Guard(cfg.guard, self.root, self.metrics.registry) if cfg.guard.enabled else None
        self.rag = Rag(_root_path(self.root, cfg.rag.index_dir), cfg.rag.top_k, cfg.rag.template,
                       cfg.rag.max_context_tokens)
        self.prompt_sha256 = prompt_templates_sha256()
        self._embedder = None
        self._embed_lock = threading.Lock()
        self.inflight = 0
        self._inflight_lock = threading.Lock()
        self.started = False
        self.shadow: Any = None  # pipelines.serving.shadow.Shadow, set by create_app

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the aliased versions (blocking) and start the alias poller."""
        if self.started:
            return
        self.started = True
        try:
            self.slots.reload()
        except Exception as exc:  # a broken registry must not keep /health from answering
            log.exception("could not load %s@%s", self.registry.model_name, self.registry.alias)
            self.slots.errors[self.registry.alias] = f"{type(exc).__name__}: {exc}"
        self.slots.start_polling(self.cfg.reload_poll_s)

    def stop(self) -> None:
        self.slots.close()
        self.metrics.close()

    def _occupancy(self) -> int:
        return sum(s.engine.active for s in list(self.slots.served.values()))

    def _models_changed(self) -> None:
        self.metrics.set_models(self.registry.model_name, {a: s.version for a, s in self.slots.served.items()})

    # ------------------------------------------------------------ request plumbing
    def authorize(self, request: Request, ctx: Ctx, admin: bool = False, limiter: RateLimiter | None = None) -> None:
        key = self.keys.check(request.headers.get("authorization"), admin=admin)
        ctx.key_id = key.id if key else None
        bucket = key.id if key else f"ip:{request.client.host if request.client else '-'}"
        (limiter or self.limiter).take(bucket)

    async def read_json(self, request: Request) -> Any:
        limit = self.cfg.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"Request body of {declared} bytes exceeds the limit of {limit} bytes",
                           "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"Request body exceeds the limit of {limit} bytes", "request_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise APIError(400, f"Request body is not valid UTF-8 (byte {exc.start})", "invalid_utf8")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise APIError(400, f"We could not parse the JSON body of your request: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}", "invalid_json")

    @staticmethod
    def parse(model, body: Any):
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object", "invalid_json")
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"])
            raise APIError(422, f"Invalid value for '{param}': {err['msg']}", "invalid_value", param)

    def admit(self) -> None:
        with self._inflight_lock:
            if self.inflight >= self.cfg.limits.max_concurrent:
                raise APIError(503, f"The server is at its limit of {self.cfg.limits.max_concurrent} concurrent "
                                    "requests; retry shortly", "server_overloaded", headers={"Retry-After": "1"})
            self.inflight += 1
        self.metrics.inflight.inc()

    def leave(self) -> None:
        with self._inflight_lock:
            self.inflight -= 1
        self.metrics.inflight.dec()

    def rollout_state(self) -> RolloutState | None:
        """The running rollout, or None (no state file, not running, or unreadable: then the champion serves and the
        error is logged once per distinct message)."""
        try:
            state = self.rollout.load()
        except Exception as exc:  # a broken state file must not fail requests
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self._rollout_error:
                log.error("rollout state %s unreadable, serving the champion only: %s", self.rollout.uri, msg)
                self._rollout_error = msg
            self.metrics.rollout_share.set(0.0)
            return None
        self._rollout_error = None
        running = state if state is not None and state.running else None
        self.metrics.rollout_share.set(running.challenger_share() if running else 0.0)
        return running

    def route(self, req: ChatRequest, ctx: Ctx, champion: bool = False) -> tuple[str, bool]:
        """(alias, rag) for the requested model name; sets the request's arm (and rollout) on `ctx`. champion: never
        the challenger arm (the retry of a failed challenger attempt, `fallback_from`)."""
        name = self.registry.model_name
        model = req.model or name
        rag = bool(req.rag)
        if model.endswith(RAG_SUFFIX):
            model, rag = model[: -len(RAG_SUFFIX)], True
        base, _, alias = model.partition(":")
        if base != name or (alias and alias not in self.slots.aliases):
            raise APIError(404, f"The model '{req.model}' does not exist; see GET /v1/models", "model_not_found",
                           "model")
        challenger = self.cfg.challenger.alias
        if not alias:
            alias = self.registry.alias
            sticky = ctx.key_id or req.user or "anonymous"
            state = self.rollout_state()
            if state is not None:
                loaded = self.slots.served.get(challenger)
                if loaded is not None and loaded.version == state.challenger_version:  # else: not live yet
                    ctx.rollout_id = state.rollout_id
                    if state.shadowing():
                        ctx.shadow = True
                    elif not champion and assign_challenger(sticky, state.rollout_id, state.challenger_share()):
                        alias = challenger
            else:
                share = self.cfg.challenger.traffic_share
                if share > 0 and challenger in self.slots.served and not champion:
                    if int(hashlib.sha256(sticky.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share:
                        alias = challenger
        ctx.arm = "challenger" if alias == challenger and alias != self.registry.alias else "champion"
        ctx.model = name + (RAG_SUFFIX if rag else "")
        ctx.mode = "rag" if rag else "chat"
        return alias, rag

    FALLBACK_CODES = ("model_unavailable", "internal_error")  # not overload (503), timeouts (504) nor any 4xx

    @staticmethod
    def may_fall_back(ctx: Ctx) -> bool:
        """A first attempt on the challenger arm that a running rollout assigned (fallback_from may retry it)."""
        return ctx.endpoint == "chat" and ctx.arm == "challenger" and ctx.rollout_id is not None and not ctx.fallback

    def fallback_from(self, ctx: Ctx, err: APIError) -> Ctx | None:
        """A challenger attempt of a running rollout that failed with `err` before any byte was sent: logs it on the
        challenger arm (its 5xx, `fallback: true`: the rollout analysis counts the error) and returns the context of
        the retry on the champion (same key, rollout and start time; its own request_id), or None when this failure
        is not retried (the champion arm, a `<model>:challenger` request, no rollout, a 4xx, overload, a timeout,
        a retry already)."""
        if not self.may_fall_back(ctx) or err.status < 500 or err.code not in self.FALLBACK_CODES:
            return None
        ctx.fallback = True
        self.log_request(ctx, err.status)
        self.metrics.challenger_fallbacks.labels(ctx.rollout_id, ctx.version or "", str(err.status)).inc()
        log.warning("challenger %s failed (%s %s); request %s retried on the champion", ctx.version, err.status,
                    err.code, ctx.request_id)
        return Ctx("chat", t0=ctx.t0, key_id=ctx.key_id, fallback=True)

    def log_request(self, ctx: Ctx, status: int, response: str | None = None, completion_tokens: int | None = None,
                    ttft_ms: float | None = None) -> None:
        latency_ms = ctx.ms()
        ctx.status = status
        self.metrics.requests.labels(ctx.endpoint, str(status), ctx.alias or "", ctx.version or "").inc()
        self.metrics.latency.labels(ctx.endpoint, ctx.mode).observe(latency_ms / 1000)
        if ctx.endpoint not in ("chat", "shadow"):
            return
        self.metrics.arm_requests.labels(ctx.arm or "", ctx.rollout_id or "", ctx.version or "", str(status)).inc()
        if ctx.endpoint == "chat":
            self.recent.add(ctx.request_id, {"key_id": ctx.key_id, "model_version": ctx.version, "alias": ctx.alias,
                                             "arm": ctx.arm, "rollout_id": ctx.rollout_id, "status": status})
        try:
            self.request_log.record(
                request_id=ctx.request_id, key_id=ctx.key_id, model=ctx.model or self.registry.model_name,
                model_version=ctx.version, alias=ctx.alias, mode=ctx.mode, status=status, prompt=ctx.prompt,
                response=response if status < 400 else None, prompt_tokens=ctx.prompt_tokens,
                completion_tokens=completion_tokens, latency_ms=latency_ms, ttft_ms=ttft_ms, contexts=ctx.contexts,
                cpu_s=ctx.cpu_s, cost_usd=ctx.cost_usd, arm=ctx.arm, rollout_id=ctx.rollout_id,
                replica=self.replica, shadow_of=ctx.shadow_of, fallback=ctx.fallback and ctx.arm == "challenger")
        except Exception:  # the log must never fail a request
            log.exception("request log write failed")

    def find_request(self, request_id: str) -> dict | None:
        """What feedback needs of a chat request (key_id, model_version, alias, arm, rollout_id, status): from this
        process's memory, else from the shared request log (another replica served it; rotated files included, the
        `serve.feedback_lookup_files` newest). Blocking (file scan): call it in a worker thread."""
        meta = self.recent.get(request_id)
        if meta is not None:
            return meta
        line = find_line(self.request_log.path, "request_id", request_id, self.cfg.feedback_lookup_files)
        if line is None:
            return None
        return {k: line.get(k) for k in ("key_id", "model_version", "alias", "arm", "rollout_id", "status")}

    def embedder(self):
        with self._embed_lock:
            if self._embedder is None:
                from pipelines.embeddings.encoder import load_model, resolve_model_dir

                self._embedder = load_model(resolve_model_dir(self.cfg.embeddings.model_package))
                self.rag.embedder = self._embedder
            return self._embedder

    # ------------------------------------------------------------ chat
    def prepare(self, req: ChatRequest, ctx: Ctx, served: Served, rag: bool) -> tuple[list[int], int]:
        from pipelines.models import lm

        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        if messages[-1]["role"] == "assistant":
            raise APIError(400, "The last message must come from the user or the system", "invalid_messages",
                           "messages")
        if not any(m["content"].strip() for m in messages):
            raise APIError(400, "All messages are empty", "empty_messages", "messages")
        users = [m for m in messages if m["role"] == "user"]
        ctx.prompt = users[-1]["content"] if users else messages[-1]["content"]
        if self.guard:  # input policy: PII redacted in place; a block raises GuardBlocked (answered as a refusal)
            pending = self.guard.begin_input(messages, ctx.key_id)
            if self.guard.cfg.parallel_input and not pending.blocked_by_rules:
                ctx.pending_input = pending  # the detectors run in the handler, while the model prefills
            else:
                self.guard.enforce(pending.finish())
        max_new = req.max_completion_tokens or req.max_tokens or self.cfg.max_new_tokens
        if max_new > self.cfg.limits.max_tokens:
            raise APIError(400, f"max_tokens is too large: {max_new}. This server allows at most "
                                f"{self.cfg.limits.max_tokens}", "invalid_value", "max_tokens")
        if rag:
            if not self.rag.available():
                raise APIError(503, f"RAG mode needs the vector index at {self.rag.index_dir} (run the embed stage)",
                               "rag_unavailable")
            if not users or not ctx.prompt.strip():
                raise APIError(400, "RAG mode needs a non-empty user message", "empty_messages", "messages")
            self.embedder()
            filled, ctx.contexts = self.rag.build(ctx.prompt, served.tokenizer)
            if self.guard:  # an instruction planted in a retrieved chunk (indirect injection)
                self.guard.enforce_contexts(ctx.contexts, ctx.key_id)
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last] = {"role": "user", "content": filled}
        ids = lm.chat_prompt_ids(served.tokenizer, messages)
        ctx.prompt_tokens = len(ids)
        limit = self.cfg.limits.max_prompt_tokens
        context = getattr(served.engine.model.config, "max_position_embeddings", None)
        if len(ids) > limit:
            raise APIError(400, f"This server's maximum prompt length is {limit} tokens; your messages resulted in "
                                f"{len(ids)} tokens", "context_length_exceeded", "messages")
        if context and len(ids) + max_new > context:
            raise APIError(400, f"This model's maximum context length is {context} tokens; your prompt of {len(ids)} "
                                f"tokens plus max_tokens {max_new} exceeds it", "context_length_exceeded",
                           "messages")
        return ids, max_new

    def fingerprint(self, s: Served) -> str:
        return f"{self.registry.model_name}:{s.version}"


def get_runtime(request: Request) -> Runtime:
    """The app's Runtime (a FastAPI dependency for the routes)."""
    return request.app.state.runtime
