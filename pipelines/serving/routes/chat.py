"""`POST /v1/chat/completions`: chat completions, `stream=true` as OpenAI's SSE chunks + `[DONE]` (usage with
`stream_options.include_usage`); RAG mode with model `<name>-rag` or `"rag": true` (answer carries `citations`).

Each response names the version that served it: `system_fingerprint` "<model>:<version>" and the headers
`x-llmops-model-version`, `x-llmops-alias`, `x-request-id`. Every chat request, errors included, is one line of the
request log (pipelines.serving.request_log). A request a running rollout sent to the challenger that fails before
any byte was sent (no model loaded, EngineDead, an exception; a stream before its first event) is retried once on
the champion; the failed attempt is its own challenger line (5xx, `fallback: true`), see Runtime.fallback_from.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pipelines.security.guard import GuardBlocked
from pipelines.serving.engine import Delta, Done
from pipelines.serving.conformance import check_request
from pipelines.serving.errors import APIError
from pipelines.serving.openai_params import chat_logprobs, chat_plan, count_unbatched
from pipelines.serving.prefetch import Ahead
from pipelines.serving.reload import Served
from pipelines.serving.runtime import Ctx, ResponseCache, Runtime, generation_error, get_runtime, log
from pipelines.serving.schemas import ChatRequest

router = APIRouter()


def _chunk(cid: str, created: int, model: str, fp: str, delta: dict | None, finish: str | None,
           include_usage: bool, usage: dict | None = None, extra: dict | None = None,
           logprobs: dict | None = None) -> str:
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "system_fingerprint": fp,
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs,
                                                                  "finish_reason": finish}]}
    if include_usage:
        body["usage"] = usage
    if extra:
        body.update(extra)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class _Peeked:
    """`gen` with its first event pulled before the response starts (`pull`, which raises what `gen` raised): a
    stream on the rollout's challenger can still fall back to the champion then, since no byte was sent."""

    def __init__(self, gen):
        self.gen, self.first = gen, []

    async def pull(self) -> None:
        try:
            self.first.append(await anext(self.gen))
        except StopAsyncIteration:
            pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        return self.first.pop() if self.first else await anext(self.gen)

    async def aclose(self) -> None:
        await self.gen.aclose()


@router.post("/v1/chat/completions")
async def chat(request: Request, rt: Runtime = Depends(get_runtime)):
    out = await _chat(request, rt)
    if isinstance(out, tuple):  # the rollout's challenger failed before a byte was sent: once more on the champion
        out = await _chat(request, rt, retry=out)
    return out


async def _chat(request: Request, rt: Runtime, retry: tuple[Ctx, Any] | None = None):
    """The response, or (champion ctx, body) when a challenger attempt failed before a byte was sent
    (Runtime.fallback_from: logged on the challenger arm); `retry` is that pair (authorized, body read)."""
    cfg = rt.cfg
    ctx = retry[0] if retry else Ctx("chat")
    served: Served | None = None
    admitted = False
    try:
        if retry is None:
            rt.authorize(request, ctx)
            body = await rt.read_json(request)
        else:
            body = retry[1]
        check_request(body, "chat")  # refused / unknown OpenAI parameters: 400 naming them (conformance table)
        req = rt.parse(ChatRequest, body)
        alias, rag = rt.route(req, ctx, champion=retry is not None)
        served = rt.slots.acquire(alias)
        if served is None:
            raise APIError(503, rt.slots.errors.get(alias) or f"no model is loaded for '{alias}'",
                           "model_unavailable", headers={"Retry-After": "5"})
        ctx.alias, ctx.version = served.alias, served.version
        # stop, penalties, logprobs, response_format, tools -> engine parameters (grammars compiled off the loop)
        plan = (await asyncio.to_thread(chat_plan, req, served.engine)) if req.tools or req.response_format \
            else chat_plan(req, served.engine)
        ids, max_new = (await asyncio.to_thread(rt.prepare, req, ctx, served, rag)) if rag else \
            rt.prepare(req, ctx, served, rag)
        rt.admit()
        admitted = True
    except APIError as exc:
        if served is not None:
            rt.slots.release(served)
        if (champion := rt.fallback_from(ctx, exc)) is not None:
            return champion, body
        rt.log_request(ctx, exc.status)
        return exc.response(ctx.headers())
    except GuardBlocked as blocked:
        rt.slots.release(served)
        rt.log_request(ctx, 200, blocked.text)
        return JSONResponse(rt.guard.refusal_body(blocked.verdict, cid=f"chatcmpl-{uuid.uuid4().hex}",
                            created=int(time.time()), model=ctx.model, fingerprint=rt.fingerprint(served)),
                            headers=ctx.headers())

    greedy = req.temperature == 0.0
    cache_key = ResponseCache.key(served.version, [ids, plan.cache_part()], max_new) \
        if greedy and cfg.cache.max_entries else None  # every parameter that changes the output is in the key
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    fp = rt.fingerprint(served)
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
                yield "delta", Delta(cached.text, cached.logprobs)
            yield "done", cached
            return
        count_unbatched(rt.metrics, served.engine, plan.params)
        gen = served.engine.stream(ids, max_new_tokens=max_new, params=plan.params)
        try:
            async for item in gen:
                if isinstance(item, Delta):
                    yield "delta", item
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

    # shadow rollout: the challenger's copy, queued only after the answer above was sent (pipelines.serving.shadow)
    shadow_copy = rt.shadow.after(req, ctx, rag, ids, max_new, served, plan.params)

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
        except Exception as exc:
            err = generation_error(exc, timeout)
        else:
            err = None
        finally:
            await gen.aclose()
            release()
            finish_accounting(done)
        if err is not None or done is None:
            err = err or APIError(500, "generation produced no result", "internal_error")
            if (champion := rt.fallback_from(ctx, err)) is not None:
                return champion, body
            rt.log_request(ctx, err.status)
            return err.response(ctx.headers())
        if ttft is not None:
            rt.metrics.ttft.labels(ctx.mode).observe(ttft / 1000)
        gout = await asyncio.to_thread(rt.guard.screen_output, req.messages, done.text, ctx.key_id) \
            if rt.guard else None
        if gout is not None and gout.blocked:  # output policy: the answer is replaced by a refusal
            rt.log_request(ctx, 200, rt.guard.refusal_text(gout), done.completion_tokens, ttft)
            return JSONResponse(rt.guard.refusal_body(gout, cid=cid, created=created, model=ctx.model,
                                                      fingerprint=fp, usage=usage_of(done)), headers=ctx.headers(),
                                background=shadow_copy)
        text = gout.text if gout is not None else done.text  # PII redacted by the output policy
        rt.log_request(ctx, 200, text, done.completion_tokens, ttft)
        message, finish = plan.message(text, done.finish_reason)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": ctx.model,
            "system_fingerprint": fp,
            "choices": [{"index": 0, "message": message, "logprobs": chat_logprobs(done.logprobs),
                         "finish_reason": finish}],
            "usage": usage_of(done), **extra}, headers={**ctx.headers(), "x-llmops-cache": (
                "hit" if cached is not None else "miss") if cache_key else "off"}, background=shadow_copy)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    ahead = Ahead(generate()) if verdict_task is not None else None
    refused = await input_verdict(ahead)
    if refused is not None:
        return refused

    first = None
    if rt.may_fall_back(ctx):  # the rollout's challenger: its first event before any byte (a failure: fallback)
        first = _Peeked(ahead if ahead is not None else generate())
        try:
            async with asyncio.timeout(timeout):
                await first.pull()
        except Exception as exc:
            err = generation_error(exc, timeout)
        else:
            err = None
        if err is not None:
            await first.aclose()
            release()
            finish_accounting(None)
            if (champion := rt.fallback_from(ctx, err)) is not None:
                return champion, body
            rt.log_request(ctx, err.status)
            return err.response(ctx.headers())

    async def sse():
        ttft = None
        done = None
        status = 499  # client closed the connection before the end
        gen = first if first is not None else ahead if ahead is not None else generate()
        try:
            yield _chunk(cid, created, ctx.model, fp, {"role": "assistant", "content": ""}, None, include_usage,
                         extra=extra)
            try:
                async with asyncio.timeout(timeout):
                    async for kind, value in gen:
                        if kind == "delta":
                            if ttft is None:
                                ttft = ctx.ms()
                            lps = chat_logprobs(value.logprobs) if value.logprobs else None
                            for delta in plan.deltas(value.text) or ([{"content": ""}] if lps else []):
                                yield _chunk(cid, created, ctx.model, fp, delta, None, include_usage, logprobs=lps)
                                lps = None
                        else:
                            done = value
            except Exception as exc:
                err = generation_error(exc, timeout)
                status = err.status
                yield f"data: {json.dumps(err.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            # output policy on a stream: what was sent stays sent; a block ends it as content_filter
            gout = await asyncio.to_thread(rt.guard.screen_output, req.messages, done.text, ctx.key_id) \
                if rt.guard else None
            rest, finish = plan.final(done.finish_reason)
            for delta in rest:
                yield _chunk(cid, created, ctx.model, fp, delta, None, include_usage)
            yield _chunk(cid, created, ctx.model, fp, {}, "content_filter" if gout and gout.blocked else
                         finish, include_usage, extra={"guard": gout.body()} if gout and gout.checks
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
                             headers={**ctx.headers(), "Cache-Control": "no-cache"}, background=shadow_copy)
