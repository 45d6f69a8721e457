"""The OpenAI-compatible HTTP API of the registry's champion (and challenger).

`create_app(cfg, registry)` builds the FastAPI app (one uvicorn process by default; `pipelines.serving.ray_app`
runs the same app as Ray Serve replicas):

- `POST /v1/chat/completions`  chat completions, `stream=true` as OpenAI's SSE chunks + `[DONE]` (usage with
  `stream_options.include_usage`); RAG mode with model `<name>-rag` or `"rag": true` (answer carries `citations`)
- `GET /v1/models`, `POST /v1/embeddings` (the platform's MiniLM; float or base64)
- `GET /health` (no auth): served version per alias, prompt-template hashes; 503 while no champion is loaded
- `GET /metrics` (no auth): Prometheus text
- `POST /admin/reload` (admin key): re-resolve the aliases now (the poller does it every `serve.reload_poll_s`)

Each response names the version that served it: `system_fingerprint` "<model>:<version>" and the headers
`x-llmops-model-version`, `x-llmops-alias`, `x-request-id`. Errors are OpenAI error JSON (pipelines.serving.errors).
Every chat request, errors included, is one line of the request log (pipelines.serving.request_log).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.models.registry import RegistryConfig, prompt_templates_sha256
from pipelines.security.guard import Guard, GuardBlocked
from pipelines.serving.auth import KeyStore, RateLimiter, is_loopback
from pipelines.serving.config import ServeConfig
from pipelines.serving.engine import Delta, Done, Engine, EngineDead
from pipelines.serving.errors import APIError
from pipelines.serving.metrics import Metrics
from pipelines.serving.prefetch import Ahead
from pipelines.serving.rag import Rag
from pipelines.serving.reload import Served, Slots
from pipelines.serving.request_log import RequestLog
from pipelines.serving.schemas import ChatRequest, EmbeddingRequest

log = logging.getLogger("llmops.serve")

RAG_SUFFIX = "-rag"


def _root_path(root: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else root / path


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
        self.cache = ResponseCache(cfg.cache.max_entries)
        self.request_log = RequestLog(_root_path(self.root, cfg.request_log), cfg.request_log_max_bytes)
        b = cfg.batching
        aliases = [registry.alias] + ([cfg.challenger.alias] if cfg.challenger.alias != registry.alias else [])
        self.slots = Slots(registry, aliases, lambda loaded: Engine(loaded, b.mode, b.num_blocks,
                                                                   b.max_batch_tokens),
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
    def authorize(self, request: Request, ctx: Ctx, admin: bool = False) -> None:
        key = self.keys.check(request.headers.get("authorization"), admin=admin)
        ctx.key_id = key.id if key else None
        bucket = key.id if key else f"ip:{request.client.host if request.client else '-'}"
        self.limiter.take(bucket)

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

    def route(self, req: ChatRequest, ctx: Ctx) -> tuple[str, bool]:
        """(alias, rag) for the requested model name."""
        name = self.registry.model_name
        model = req.model or name
        rag = bool(req.rag)
        if model.endswith(RAG_SUFFIX):
            model, rag = model[: -len(RAG_SUFFIX)], True
        base, _, alias = model.partition(":")
        if base != name or (alias and alias not in self.slots.aliases):
            raise APIError(404, f"The model '{req.model}' does not exist; see GET /v1/models", "model_not_found",
                           "model")
        if not alias:
            alias = self.registry.alias
            share = self.cfg.challenger.traffic_share
            if share > 0 and self.cfg.challenger.alias in self.slots.served:
                sticky = ctx.key_id or req.user or "anonymous"
                if int(hashlib.sha256(sticky.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share:
                    alias = self.cfg.challenger.alias
        ctx.model = name + (RAG_SUFFIX if rag else "")
        ctx.mode = "rag" if rag else "chat"
        return alias, rag

    def log_request(self, ctx: Ctx, status: int, response: str | None = None, completion_tokens: int | None = None,
                    ttft_ms: float | None = None) -> None:
        latency_ms = ctx.ms()
        self.metrics.requests.labels(ctx.endpoint, str(status), ctx.alias or "", ctx.version or "").inc()
        self.metrics.latency.labels(ctx.endpoint, ctx.mode).observe(latency_ms / 1000)
        if ctx.endpoint != "chat":
            return
        try:
            self.request_log.record(
                request_id=ctx.request_id, key_id=ctx.key_id, model=ctx.model or self.registry.model_name,
                model_version=ctx.version, alias=ctx.alias, mode=ctx.mode, status=status, prompt=ctx.prompt,
                response=response if status < 400 else None, prompt_tokens=ctx.prompt_tokens,
                completion_tokens=completion_tokens, latency_ms=latency_ms, ttft_ms=ttft_ms, contexts=ctx.contexts,
                cpu_s=ctx.cpu_s, cost_usd=ctx.cost_usd)
        except Exception:  # the log must never fail a request
            log.exception("request log write failed")

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


def _chunk(cid: str, created: int, model: str, fp: str, delta: dict | None, finish: str | None,
           include_usage: bool, usage: dict | None = None, extra: dict | None = None) -> str:
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "system_fingerprint": fp,
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                                  "finish_reason": finish}]}
    if include_usage:
        body["usage"] = usage
    if extra:
        body.update(extra)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(cfg: ServeConfig, registry: RegistryConfig, *, root: Path | None = None,
               keys: KeyStore | None = None, manage_lifecycle: bool = True) -> FastAPI:
    rt = Runtime(cfg, registry, root=root, keys=keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_lifecycle:
            await asyncio.to_thread(rt.start)
        yield
        if manage_lifecycle:
            await asyncio.to_thread(rt.stop)

    app = FastAPI(title="LLMOps OpenAI-compatible API", version="2", lifespan=lifespan)
    app.state.runtime = rt

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "http_error"
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, f"Internal error: {type(exc).__name__}", "internal_error").response()

    def fingerprint(s: Served) -> str:
        return f"{registry.model_name}:{s.version}"

    @app.get("/health")
    def health():
        served = dict(rt.slots.served)
        champ = served.get(registry.alias)
        body = {"model": registry.model_name, "alias": registry.alias, "batching": cfg.batching.mode,
                "prompt_templates_sha256": rt.prompt_sha256,
                "aliases": {a: {"version": s.version, "run_id": s.run_id, "adapter_sha256": s.adapter_sha256,
                                "prompt_templates_sha256": s.prompt_sha256, "loaded_at": s.loaded_at}
                            for a, s in served.items()},
                "errors": dict(rt.slots.errors), "reloads": rt.slots.reloads,
                "challenger_traffic_share": cfg.challenger.traffic_share, "auth": not rt.keys.empty}
        if champ is None or not champ.engine.alive():
            return JSONResponse(status_code=503, content={**body, "status": "unavailable", "version": None,
                                                          "error": rt.slots.errors.get(registry.alias)})
        return {**body, "status": "ok", "version": champ.version, "run_id": champ.run_id,
                "base_model": champ.base_model, "adapter_sha256": champ.adapter_sha256,
                "system_fingerprint": fingerprint(champ)}

    @app.get("/metrics")
    def metrics():
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload")
    async def admin_reload(request: Request, force: bool = False):
        ctx = Ctx("admin")
        try:
            rt.keys.check(request.headers.get("authorization"), admin=True)
        except APIError as exc:
            return exc.response()
        try:
            result = await asyncio.to_thread(rt.slots.reload, force)
        except Exception as exc:
            return APIError(500, f"reload failed, still serving the previous version: {exc}", "reload_failed"
                            ).response(ctx.headers())
        champ = result.get(registry.alias, {})
        body = {"reloaded": champ.get("reloaded", False), "version": champ.get("version"),
                "previous_version": champ.get("previous_version"), "aliases": result}
        if champ.get("error") and registry.alias not in rt.slots.served:
            return JSONResponse(status_code=503, content={**body, "error": champ["error"]})
        return body

    @app.get("/v1/models")
    def models(request: Request):
        ctx = Ctx("models")
        try:
            rt.authorize(request, ctx)
        except APIError as exc:
            return exc.response(ctx.headers())
        served = dict(rt.slots.served)
        created = int(min((s.loaded_at for s in served.values()), default=time.time()))
        data = []
        if served:
            data.append({"id": registry.model_name, "object": "model", "created": created, "owned_by": "llmops",
                         "version": served[registry.alias].version if registry.alias in served else None})
            for a, s in served.items():
                data.append({"id": f"{registry.model_name}:{a}", "object": "model", "created": int(s.loaded_at),
                             "owned_by": "llmops", "version": s.version, "alias": a})
            if rt.rag.available():
                data.append({"id": registry.model_name + RAG_SUFFIX, "object": "model", "created": created,
                             "owned_by": "llmops", "rag_template": cfg.rag.template})
        data.append({"id": cfg.embeddings.model_name, "object": "model", "created": created, "owned_by": "llmops"})
        return JSONResponse({"object": "list", "data": data}, headers=ctx.headers())

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        ctx = Ctx("embeddings")
        ctx.mode = "embeddings"
        try:
            rt.authorize(request, ctx)
            req = rt.parse(EmbeddingRequest, await rt.read_json(request))
            if req.model not in (None, cfg.embeddings.model_name):
                raise APIError(404, f"The model '{req.model}' does not exist; embeddings are served by "
                                    f"'{cfg.embeddings.model_name}'", "model_not_found", "model")
            texts = [req.input] if isinstance(req.input, str) else req.input
            if not texts or any(not t.strip() for t in texts):
                raise APIError(400, "input must be a non-empty string or list of non-empty strings",
                               "invalid_value", "input")
            rt.admit()
            try:
                from pipelines.embeddings.encoder import encode

                model = await asyncio.to_thread(rt.embedder)
                vectors = await asyncio.to_thread(encode, model, texts)
                n_tokens = sum(len(model.tokenizer.encode(t)) for t in texts)
            finally:
                rt.leave()
        except APIError as exc:
            rt.log_request(ctx, exc.status)
            return exc.response(ctx.headers())
        data = []
        for i, v in enumerate(vectors):
            emb: Any = (base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                        if req.encoding_format == "base64" else [float(x) for x in v])
            data.append({"object": "embedding", "index": i, "embedding": emb})
        rt.log_request(ctx, 200)
        return JSONResponse({"object": "list", "data": data, "model": cfg.embeddings.model_name,
                             "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}, headers=ctx.headers())

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        ctx = Ctx("chat")
        served: Served | None = None
        admitted = False
        try:
            rt.authorize(request, ctx)
            req = rt.parse(ChatRequest, await rt.read_json(request))
            alias, rag = rt.route(req, ctx)
            served = rt.slots.acquire(alias)
            if served is None:
                raise APIError(503, rt.slots.errors.get(alias) or f"no model is loaded for '{alias}'",
                               "model_unavailable", headers={"Retry-After": "5"})
            ctx.alias, ctx.version = served.alias, served.version
            ids, max_new = (await asyncio.to_thread(rt.prepare, req, ctx, served, rag)) if rag else \
                rt.prepare(req, ctx, served, rag)
            rt.admit()
            admitted = True
        except APIError as exc:
            if served is not None:
                rt.slots.release(served)
            rt.log_request(ctx, exc.status)
            return exc.response(ctx.headers())
        except GuardBlocked as blocked:
            rt.slots.release(served)
            rt.log_request(ctx, 200, blocked.text)
            return JSONResponse(rt.guard.refusal_body(blocked.verdict, cid=f"chatcmpl-{uuid.uuid4().hex}",
                                created=int(time.time()), model=ctx.model, fingerprint=fingerprint(served)),
                                headers=ctx.headers())

        greedy = req.temperature == 0.0
        cache_key = ResponseCache.key(served.version, ids, max_new) if greedy and cfg.cache.max_entries else None
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        fp = fingerprint(served)
        citations = [{"doc_id": c["doc_id"], "chunk_id": c["chunk_id"], "score": c["score"]}
                     for c in ctx.contexts] if ctx.contexts is not None else None
        extra = {"citations": citations} if citations is not None else {}
        timeout = cfg.limits.request_timeout_s
        share = rt.metrics.cpu_share()

        def finish_accounting(done: Done | None) -> None:
            tokens = (ctx.prompt_tokens or 0) + (done.completion_tokens if done else 0)
            ctx.cost_usd = rt.metrics.end_share(share, tokens)
            ctx.cpu_s = share.seconds
            if done is not None:
                rt.metrics.tokens.labels("prompt", served.alias, served.version).inc(ctx.prompt_tokens or 0)
                rt.metrics.tokens.labels("completion", served.alias, served.version).inc(done.completion_tokens)

        def release() -> None:
            rt.slots.release(served)
            if admitted:
                rt.leave()

        cached = rt.cache.get(cache_key) if cache_key else None
        if cache_key:
            rt.metrics.cache_lookup(cached is not None)
        # parallel input guard: its detectors run in a worker thread from here on, beside the generation below
        verdict_task = asyncio.create_task(asyncio.to_thread(ctx.pending_input.finish)) \
            if ctx.pending_input is not None else None

        async def generate():
            """Yields ('delta', text) ... then ('done', Done); the first delta marks the TTFT."""
            if cached is not None:
                if cached.text:
                    yield "delta", cached.text
                yield "done", cached
                return
            gen = served.engine.stream(ids, max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p,
                                       seed=req.seed)
            try:
                async for item in gen:
                    if isinstance(item, Delta):
                        yield "delta", item.text
                    else:
                        if cache_key and item.finish_reason in ("stop", "length"):
                            rt.cache.put(cache_key, item)
                        yield "done", item
            finally:
                await gen.aclose()

        async def input_verdict(gen: Ahead | None):
            """Waits for the parallel input guard. Blocked: the generation is cancelled before a token left, and
            the refusal is returned. The added latency is the wait past the first generated token."""
            if verdict_task is None:
                return None
            try:
                verdict = await verdict_task
            except Exception as exc:  # a broken detector fails this request, not the server
                log.exception("input guard failed")
                if gen is not None:
                    await gen.aclose()
                release()
                finish_accounting(None)
                err = APIError(500, f"the input guard failed: {exc}", "internal_error")
                rt.log_request(ctx, err.status)
                return err.response(ctx.headers())
            except asyncio.CancelledError:
                if gen is not None:
                    await gen.aclose()
                release()
                raise
            now = time.perf_counter()
            first = gen.first_at if gen is not None else None
            verdict.added = max(0.0, now - first) if first is not None else 0.0
            if rt.guard.seconds is not None:
                rt.guard.seconds.labels("input_added").observe(verdict.added)
            if not verdict.blocked:
                return None
            if gen is not None:
                await gen.aclose()
            release()
            finish_accounting(None)
            text = rt.guard.refusal_text(verdict)
            rt.log_request(ctx, 200, text)
            return JSONResponse(rt.guard.refusal_body(verdict, cid=cid, created=created, model=ctx.model,
                                                      fingerprint=fp), headers=ctx.headers())

        usage_of = lambda d: {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": d.completion_tokens,  # noqa
                              "total_tokens": (ctx.prompt_tokens or 0) + d.completion_tokens}

        if not req.stream:
            ttft = None
            done = None
            ahead = Ahead(generate()) if verdict_task is not None else None
            refused = await input_verdict(ahead)
            if refused is not None:
                return refused
            gen = ahead if ahead is not None else generate()
            try:
                async with asyncio.timeout(timeout):
                    async for kind, value in gen:
                        if kind == "delta" and ttft is None:
                            ttft = ctx.ms()
                        elif kind == "done":
                            done = value
            except TimeoutError:
                err = APIError(504, f"The request timed out after {timeout:g} s", "timeout")
            except EngineDead as exc:
                err = APIError(503, str(exc), "model_unavailable", headers={"Retry-After": "5"})
            except Exception as exc:
                log.exception("generation failed")
                err = APIError(500, f"generation failed: {exc}", "internal_error")
            else:
                err = None
            finally:
                await gen.aclose()
                release()
                finish_accounting(done)
            if err is not None or done is None:
                err = err or APIError(500, "generation produced no result", "internal_error")
                rt.log_request(ctx, err.status)
                return err.response(ctx.headers())
            if ttft is not None:
                rt.metrics.ttft.labels(ctx.mode).observe(ttft / 1000)
            gout = await asyncio.to_thread(rt.guard.screen_output, req.messages, done.text, ctx.key_id) \
                if rt.guard else None
            if gout is not None and gout.blocked:  # output policy: the answer is replaced by a refusal
                rt.log_request(ctx, 200, rt.guard.refusal_text(gout), done.completion_tokens, ttft)
                return JSONResponse(rt.guard.refusal_body(gout, cid=cid, created=created, model=ctx.model,
                                                          fingerprint=fp, usage=usage_of(done)), headers=ctx.headers())
            text = gout.text if gout is not None else done.text  # PII redacted by the output policy
            rt.log_request(ctx, 200, text, done.completion_tokens, ttft)
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": created, "model": ctx.model,
                "system_fingerprint": fp,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": done.finish_reason}],
                "usage": usage_of(done), **extra}, headers={**ctx.headers(), "x-llmops-cache": (
                    "hit" if cached is not None else "miss") if cache_key else "off"})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        ahead = Ahead(generate()) if verdict_task is not None else None
        refused = await input_verdict(ahead)
        if refused is not None:
            return refused

        async def sse():
            ttft = None
            done = None
            status = 499  # client closed the connection before the end
            gen = ahead if ahead is not None else generate()
            try:
                yield _chunk(cid, created, ctx.model, fp, {"role": "assistant", "content": ""}, None, include_usage,
                             extra=extra)
                try:
                    async with asyncio.timeout(timeout):
                        async for kind, value in gen:
                            if kind == "delta":
                                if ttft is None:
                                    ttft = ctx.ms()
                                yield _chunk(cid, created, ctx.model, fp, {"content": value}, None, include_usage)
                            else:
                                done = value
                except (TimeoutError, EngineDead, RuntimeError) as exc:
                    err = (APIError(504, f"The request timed out after {timeout:g} s", "timeout")
                           if isinstance(exc, TimeoutError) else APIError(503, str(exc), "model_unavailable"))
                    status = err.status
                    yield f"data: {json.dumps(err.body())}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                # output policy on a stream: what was sent stays sent; a block ends it as content_filter
                gout = await asyncio.to_thread(rt.guard.screen_output, req.messages, done.text, ctx.key_id) \
                    if rt.guard else None
                yield _chunk(cid, created, ctx.model, fp, {}, "content_filter" if gout and gout.blocked else
                             done.finish_reason, include_usage, extra={"guard": gout.body()} if gout and gout.checks
                             else None)
                if include_usage:
                    yield _chunk(cid, created, ctx.model, fp, None, None, True, usage_of(done))
                yield "data: [DONE]\n\n"
                status = 200
            finally:
                await gen.aclose()
                release()
                finish_accounting(done)
                if ttft is not None:
                    rt.metrics.ttft.labels(ctx.mode).observe(ttft / 1000)
                rt.log_request(ctx, status, done.text if done else None, done.completion_tokens if done else None,
                               ttft)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={**ctx.headers(), "Cache-Control": "no-cache"})

    return app
