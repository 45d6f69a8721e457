"""The OpenAI-compatible HTTP API of the registry's champion (and challenger).

`create_app(cfg, registry)` builds the FastAPI app (one uvicorn process by default; `pipelines.serving.ray_app`
runs the same app as Ray Serve replicas):

- `POST /v1/chat/completions`  chat completions, `stream=true` as OpenAI's SSE chunks + `[DONE]` (usage with
  `stream_options.include_usage`); RAG mode with model `<name>-rag` or `"rag": true` (answer carries `citations`)
- `POST /v1/completions`: text completions (lm-eval's `local-completions`: token-id prompts, echo, logprobs)
- `GET /v1/models`, `POST /v1/embeddings` (the platform's MiniLM; float or base64)
- `GET /health` (no auth): served version per alias, prompt-template hashes; 503 while no champion is loaded
- `GET /metrics` (no auth): Prometheus text
- `POST /v1/feedback`: a rating (thumbs or 1-5) of an answer by its `x-request-id` (pipelines.serving.feedback)
- `POST /admin/reload` (admin key): re-resolve the aliases now (the poller does it every `serve.reload_poll_s`)

The routes live in pipelines.serving.routes (one router per endpoint family); the shared request handling (auth,
limits, admission, routing to an arm, request logging) in pipelines.serving.runtime. `create_app` only wires.

Each response names the version that served it: `system_fingerprint` "<model>:<version>" and the headers
`x-llmops-model-version`, `x-llmops-alias`, `x-request-id`. Errors are OpenAI error JSON (pipelines.serving.errors).
Every chat request, errors included, is one line of the request log (pipelines.serving.request_log).
"""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.models.registry import RegistryConfig
from pipelines.serving.auth import KeyStore
from pipelines.serving.config import ServeConfig
from pipelines.serving.errors import APIError
from pipelines.serving.routes import admin, chat, completions, embeddings, feedback, health, models
from pipelines.serving.routes.chat import _chunk
from pipelines.serving.runtime import RAG_SUFFIX, Ctx, ResponseCache, Runtime, log
from pipelines.serving.shadow import Shadow

__all__ = ["RAG_SUFFIX", "Ctx", "ResponseCache", "Runtime", "_chunk", "create_app"]

ROUTERS = (health.router, admin.router, models.router, embeddings.router, chat.router, completions.router,
           feedback.router)


def create_app(cfg: ServeConfig, registry: RegistryConfig, *, root: Path | None = None,
               keys: KeyStore | None = None, manage_lifecycle: bool = True) -> FastAPI:
    rt = Runtime(cfg, registry, root=root, keys=keys)
    rt.shadow = Shadow(rt)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_lifecycle:
            await asyncio.to_thread(rt.start)
        yield
        await rt.shadow.close()
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

    for router in ROUTERS:
        app.include_router(router)
    return app
