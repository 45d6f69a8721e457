"""`GET /v1/models`: the served model under its name and per alias (`<name>:<alias>`), RAG mode, embeddings."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pipelines.serving.errors import APIError
from pipelines.serving.runtime import RAG_SUFFIX, Ctx, Runtime, get_runtime

router = APIRouter()


@router.get("/v1/models")
def models(request: Request, rt: Runtime = Depends(get_runtime)):
    cfg, registry = rt.cfg, rt.registry
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
