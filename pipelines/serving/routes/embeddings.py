"""`POST /v1/embeddings`: the platform's MiniLM, float or base64 (OpenAI's shape)."""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pipelines.serving.errors import APIError
from pipelines.serving.runtime import Ctx, Runtime, get_runtime
from pipelines.serving.schemas import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request, rt: Runtime = Depends(get_runtime)):
    cfg = rt.cfg
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
