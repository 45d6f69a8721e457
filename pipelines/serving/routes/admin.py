"""`POST /admin/reload` (admin key): re-resolve the aliases now (the poller does it every `serve.reload_poll_s`)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pipelines.serving.errors import APIError
from pipelines.serving.runtime import Ctx, Runtime, get_runtime

router = APIRouter()


@router.post("/admin/reload")
async def admin_reload(request: Request, force: bool = False, rt: Runtime = Depends(get_runtime)):
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
    champ = result.get(rt.registry.alias, {})
    body = {"reloaded": champ.get("reloaded", False), "version": champ.get("version"),
            "previous_version": champ.get("previous_version"), "aliases": result}
    if champ.get("error") and rt.registry.alias not in rt.slots.served:
        return JSONResponse(status_code=503, content={**body, "error": champ["error"]})
    return body
