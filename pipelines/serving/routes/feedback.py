"""`POST /v1/feedback` `{request_id, rating, scale?, correction?, tags?}`: a user rates an answer it received.

Same keys as chat; a key rates only its own requests: an unknown request id, another key's, or a shadow copy's
all answer the same 404 (nothing tells them apart). A rating off its scale: 422. The same key rating the same
request again: 200 with `"duplicate": true`, counted and logged once (the first rating stands). Its own rate limit
per key (`serve.limits.feedback_rate_limit_*`): 429 with Retry-After. The request may have been served by another
replica: it is looked up in this process first, then in the shared request log (pipelines.serving.runtime). The
line written is pipelines.serving.feedback's; Prometheus counts `llmops_feedback_total` per model version, alias,
arm and polarity.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pipelines.serving.errors import APIError
from pipelines.serving.feedback import FeedbackRequest
from pipelines.serving.runtime import Ctx, Runtime, get_runtime

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request, rt: Runtime = Depends(get_runtime)):
    ctx = Ctx("feedback")
    ctx.mode = "feedback"
    try:
        rt.authorize(request, ctx, limiter=rt.feedback_limiter)
        fb = rt.parse(FeedbackRequest, await rt.read_json(request))
        meta = await asyncio.to_thread(rt.find_request, fb.request_id)
        if meta is None or meta.get("key_id") != ctx.key_id or meta.get("arm") == "shadow":
            raise APIError(404, f"No request '{fb.request_id}' was answered for this API key", "request_not_found",
                           "request_id")
        ctx.alias, ctx.version = meta.get("alias"), meta.get("model_version")
        line, written = await asyncio.to_thread(rt.feedback_log.submit, fb, key_id=ctx.key_id, meta=meta,
                                                replica=rt.replica)
    except APIError as exc:
        rt.log_request(ctx, exc.status)
        return exc.response(ctx.headers())
    if written:
        rt.metrics.feedback.labels(line["model_version"] or "", line["alias"] or "", line["arm"] or "",
                                   "negative" if line["negative"] else "positive").inc()
    else:
        rt.metrics.feedback_duplicates.inc()
    rt.log_request(ctx, 200)
    return JSONResponse({"object": "feedback", "id": line["feedback_id"], "request_id": fb.request_id,
                         "rating": line["rating"], "scale": line["scale"], "negative": line["negative"],
                         "model_version": line["model_version"], "duplicate": not written},
                        headers=ctx.headers())
