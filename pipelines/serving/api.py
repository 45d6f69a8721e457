"""OpenAI-style chat completions for the registry's champion.

`create_app(cfg, registry)` builds a FastAPI app that, on startup, resolves `registry.model_name@registry.alias` in
the MLflow registry at `registry.tracking_uri` (the shared `registry` section of params.yaml), fetches the
version's artifacts (LoRA adapter + tokenizer + `llmops_spec.json` naming the base model), loads base +
adapter (merged, float32, CPU) and serves:

- `GET /health`                 200 {status: "ok", model, version, alias, ...}; 503 while no champion is loaded
- `POST /v1/chat/completions`   non-streaming OpenAI chat completion; temperature 0 = greedy; 503 without a model
- `POST /admin/reload`          re-resolve the alias and load the new version if it moved (promotion / rollback)

Generation runs under a lock (one request at a time per process); scale out with more replicas (Ray Serve).
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from pipelines.config import StageConfig
from pipelines.models.registry import RegistryConfig

log = logging.getLogger("llmops.serve")


class ServeConfig(StageConfig):
    """The `serve` section of params.yaml; which model is served comes from the `registry` section."""

    host: str
    port: int
    max_new_tokens: int  # the cap on a request's max_tokens (and its value when the request names none)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False


@dataclass
class Served:
    loaded: Any  # pipelines.models.lm.LoadedModel
    version: str
    run_id: str | None
    source: str
    base_model: str
    adapter_sha256: str | None
    loaded_at: float


class NoChampion(RuntimeError):
    pass


def _resolve_base(spec: dict) -> str:
    from pipelines.models.registry import resolve_path

    for key in ("base_model_abs", "base_model"):
        value = spec.get(key)
        if value and Path(value).is_absolute() and (Path(value) / "config.json").exists():
            return value
    rel = spec.get("base_model")
    if rel and (resolve_path(rel) / "config.json").exists():
        return str(resolve_path(rel))
    if rel:
        return rel  # a Hugging Face model id, or a path that from_pretrained reports as missing
    raise FileNotFoundError("model version spec names no base model")


def load_champion(registry: RegistryConfig, current_version: str | None) -> Served | None:
    """Load the version the alias points at; None when it is `current_version` already (nothing to do)."""
    import mlflow

    from pipelines.models import lm
    from pipelines.models import registry as mlflow_registry

    client = mlflow_registry.client(registry.tracking_uri)
    version = mlflow_registry.get_alias_version(client, registry.model_name, registry.alias)
    if version is None:
        raise NoChampion(f"no version of '{registry.model_name}' has the alias '{registry.alias}' at "
                         f"{registry.tracking_uri}")
    if current_version is not None and str(version.version) == str(current_version):
        return None
    source = client.get_model_version_download_uri(registry.model_name, version.version)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=source, tracking_uri=mlflow_registry.resolve_tracking_uri(registry.tracking_uri)))
    spec_path = local / mlflow_registry.SPEC_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"{registry.model_name} v{version.version}: {mlflow_registry.SPEC_FILE} missing in "
                                f"{source}")
    spec = json.loads(spec_path.read_text())
    base = _resolve_base(spec)
    loaded = lm.load_model(base, local, merge=True)
    log.info("loaded %s v%s (alias %s) from %s on base %s", registry.model_name, version.version, registry.alias,
             source, base)
    return Served(loaded=loaded, version=str(version.version), run_id=version.run_id, source=source,
                  base_model=base, adapter_sha256=(version.tags or {}).get(mlflow_registry.HASH_TAG),
                  loaded_at=time.time())


def create_app(cfg: ServeConfig, registry: RegistryConfig) -> FastAPI:
    state: dict[str, Any] = {"served": None, "error": None}
    gen_lock = threading.Lock()
    reload_lock = threading.Lock()

    def reload(force: bool = False) -> dict:
        with reload_lock:
            current: Served | None = state["served"]
            previous = current.version if current else None
            try:
                new = load_champion(registry, None if force or current is None else current.version)
            except NoChampion as exc:
                state["error"] = str(exc)
                return {"reloaded": False, "version": previous, "previous_version": previous, "error": str(exc)}
            if new is None:
                return {"reloaded": False, "version": previous, "previous_version": previous}
            with gen_lock:  # swap between requests, never during one
                state["served"], state["error"] = new, None
            return {"reloaded": True, "version": new.version, "previous_version": previous}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            reload()
        except Exception as exc:  # a broken registry must not keep /health from answering
            log.exception("could not load %s@%s", registry.model_name, registry.alias)
            state["error"] = f"{type(exc).__name__}: {exc}"
        yield

    app = FastAPI(title="LLMOps chat API", version="1", lifespan=lifespan)

    def served_or_503() -> Served:
        served = state["served"]
        if served is None:
            raise HTTPException(status_code=503, detail=state["error"] or "no model loaded")
        return served

    @app.get("/health")
    def health():
        served = state["served"]
        body = {"model": registry.model_name, "alias": registry.alias}
        if served is None:
            return JSONResponse(status_code=503, content={**body, "status": "unavailable", "version": None,
                                                          "error": state["error"]})
        return {**body, "status": "ok", "version": served.version, "run_id": served.run_id,
                "base_model": served.base_model, "adapter_sha256": served.adapter_sha256}

    @app.post("/admin/reload")
    def admin_reload(force: bool = False):
        try:
            result = reload(force=force)
        except Exception as exc:
            raise HTTPException(status_code=500, detail=f"reload failed, still serving the previous model: {exc}")
        if result.get("error") and state["served"] is None:
            return JSONResponse(status_code=503, content=result)
        return result

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        from pipelines.models import lm

        if req.stream:
            raise HTTPException(status_code=400, detail="stream=true is not supported; send stream=false")
        if req.messages[-1].role == "assistant":
            raise HTTPException(status_code=400, detail="the last message must come from the user or the system")
        if not any(m.content.strip() for m in req.messages):
            raise HTTPException(status_code=400, detail="all messages are empty")
        served = served_or_503()
        tok = served.loaded.tokenizer
        max_new = min(req.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens)
        ids = lm.chat_prompt_ids(tok, [m.model_dump() for m in req.messages])
        limit = getattr(served.loaded.model.config, "max_position_embeddings", None)
        if limit and len(ids) + max_new > limit:
            raise HTTPException(status_code=400, detail=f"prompt of {len(ids)} tokens + {max_new} new tokens "
                                                        f"exceeds the context of {limit}")
        with gen_lock:
            served = state["served"] or served
            out = lm.generate(served.loaded.model, tok, [ids], max_new_tokens=max_new, batch_size=1,
                              temperature=req.temperature, top_p=req.top_p, seed=req.seed)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{registry.model_name}/{served.version}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out["finish_reason"]}],
            "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
                      "total_tokens": out["prompt_tokens"] + out["completion_tokens"]},
        }

    app.state.llmops = state
    app.state.reload = reload
    return app
