"""`POST /v1/completions`: OpenAI's (legacy) text completions, the endpoint lm-evaluation-harness's
`local-completions` model uses: raw prompts (no chat template) as text or token ids, one choice per prompt,
`echo`, `logprobs` (tokens, token_logprobs, top_logprobs, text_offset; with echo the prompt's too), `stop`,
penalties, `logit_bias`, `seed`, and `stream=true` as `text_completion` SSE chunks + `[DONE]`.

Which parameters are honoured: pipelines.serving.conformance. Several prompts in one request generate concurrently
(greedy ones share the continuous-batching engine). The input and output guard (serve.guard) screens a prompt as a
user message and the completion as the answer; a blocked one is answered with the refusal text and finish_reason
`content_filter`. Completions are counted in /metrics like chat; the request log (a chat-turn record) has chat only.
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
from pipelines.serving.conformance import check_request
from pipelines.serving.engine import Delta, Done
from pipelines.serving.errors import APIError
from pipelines.serving.openai_params import completion_logprobs, completion_plan, count_unbatched, prompt_list
from pipelines.serving.runtime import Ctx, ResponseCache, Runtime, generation_error, get_runtime, log
from pipelines.serving.schemas import CompletionRequest

router = APIRouter()


def _ids(rt: Runtime, served, prompt: str | list[int], max_new: int) -> tuple[list[int], str]:
    tok = served.tokenizer
    if isinstance(prompt, str):
        ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
        text = prompt
    else:
        vocab = int(served.engine.model.config.vocab_size)
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"Invalid 'prompt': token ids must be in 0..{vocab - 1}", "invalid_value", "prompt")
        ids, text = list(prompt), tok.decode(prompt)
    if not ids:
        raise APIError(400, "The prompt is empty", "invalid_value", "prompt")
    limit = rt.cfg.limits.max_prompt_tokens
    if len(ids) > limit:
        raise APIError(400, f"This server's maximum prompt length is {limit} tokens; your prompt is {len(ids)} "
                            "tokens", "context_length_exceeded", "prompt")
    context = getattr(served.engine.model.config, "max_position_embeddings", None)
    if context and len(ids) + max_new > context:
        raise APIError(400, f"This model's maximum context length is {context} tokens; your prompt of {len(ids)} "
                            f"tokens plus max_tokens {max_new} exceeds it", "context_length_exceeded", "prompt")
    return ids, text


@router.post("/v1/completions")
async def completions(request: Request, rt: Runtime = Depends(get_runtime)):
    cfg = rt.cfg
    ctx = Ctx("completions")
    served = None
    admitted = False
    try:
        rt.authorize(request, ctx)
        body = await rt.read_json(request)
        check_request(body, "completions")
        req = rt.parse(CompletionRequest, body)
        alias, rag = rt.route(req, ctx)
        if rag:
            raise APIError(400, "RAG mode is only available on /v1/chat/completions", "invalid_value", "model")
        ctx.mode = "completions"
        served = rt.slots.acquire(alias)
        if served is None:
            raise APIError(503, rt.slots.errors.get(alias) or f"no model is loaded for '{alias}'",
                           "model_unavailable", headers={"Retry-After": "5"})
        ctx.alias, ctx.version = served.alias, served.version
        max_new = 16 if req.max_tokens is None else req.max_tokens
        if max_new > cfg.limits.max_tokens:
            raise APIError(400, f"max_tokens is too large: {max_new}. This server allows at most "
                                f"{cfg.limits.max_tokens}", "invalid_value", "max_tokens")
        params, k = completion_plan(req, served.engine)
        prompts = [_ids(rt, served, p, max_new) for p in prompt_list(req.prompt)]
        if not prompts:
            raise APIError(400, "The prompt list is empty", "invalid_value", "prompt")
        blocked: dict[int, str] = {}
        if rt.guard:  # the input policy, each prompt as a user message
            for i, (_, text) in enumerate(prompts):
                try:
                    rt.guard.enforce(await asyncio.to_thread(rt.guard.check_input,
                                                             [{"role": "user", "content": text}], ctx.key_id))
                except GuardBlocked as exc:
                    blocked[i] = rt.guard.refusal_text(exc.verdict)
        ctx.prompt_tokens = sum(len(ids) for ids, _ in prompts)
        rt.admit()
        admitted = True
    except APIError as exc:
        if served is not None:
            rt.slots.release(served)
        rt.log_request(ctx, exc.status)
        return exc.response(ctx.headers())

    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    fp = rt.fingerprint(served)
    model = rt.registry.model_name
    greedy = params.temperature == 0.0
    timeout = cfg.limits.request_timeout_s

    async def one(i: int, ids: list[int]):
        """Yields Delta ... Done for prompt i (from the cache when a greedy answer is there)."""
        if i in blocked:
            yield Done("content_filter", 0, blocked[i])
            return
        key = ResponseCache.key(served.version, [ids, "completions", params.cache_key_part()], max_new) \
            if greedy and cfg.cache.max_entries else None
        hit = rt.cache.get(key) if key else None
        if key:
            rt.metrics.cache_lookup(hit is not None)
        if hit is not None:
            if hit.text:
                yield Delta(hit.text, hit.logprobs, hit.completion_tokens)
            yield hit
            return
        count_unbatched(rt.metrics, served.engine, params)
        gen = served.engine.stream(ids, max_new_tokens=max_new, params=params)
        try:
            async for item in gen:
                if isinstance(item, Done) and key and item.finish_reason in ("stop", "length"):
                    rt.cache.put(key, item)
                yield item
        finally:
            await gen.aclose()

    def screened(done: Done, prompt: str) -> tuple[str, str]:
        if rt.guard and done.finish_reason != "content_filter":
            v = rt.guard.check_output([{"role": "user", "content": prompt}], done.text, ctx.key_id)
            if v.blocked:
                return rt.guard.refusal_text(v), "content_filter"
            return v.text, done.finish_reason
        return done.text, done.finish_reason

    def choice_logprobs(done: Done) -> dict | None:
        if k is None:
            return None
        entries = (done.prompt_logprobs or []) if req.echo else []
        return completion_logprobs(entries + (done.logprobs or []), 0)  # offsets into the returned text

    def usage(dones: list[Done]) -> dict:
        out = sum(d.completion_tokens for d in dones)
        return {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": out,
                "total_tokens": (ctx.prompt_tokens or 0) + out}

    def finish_metrics(dones: list[Done]) -> None:
        rt.metrics.tokens.labels("prompt", served.alias, served.version).inc(ctx.prompt_tokens or 0)
        rt.metrics.tokens.labels("completion", served.alias, served.version).inc(
            sum(d.completion_tokens for d in dones))

    if not req.stream:
        async def run(i, ids):
            done = None
            async for item in one(i, ids):
                if isinstance(item, Done):
                    done = item
            return done

        try:
            async with asyncio.timeout(timeout):
                dones = await asyncio.gather(*(run(i, ids) for i, (ids, _) in enumerate(prompts)))
        except Exception as exc:
            err = generation_error(exc, timeout)
        else:
            err = None
        finally:
            rt.slots.release(served)
            rt.leave()
        if err is not None:
            rt.log_request(ctx, err.status)
            return err.response(ctx.headers())
        choices = []
        for i, ((ids, ptext), done) in enumerate(zip(prompts, dones)):
            text, finish = screened(done, ptext)
            choices.append({"text": (ptext if req.echo else "") + text, "index": i,
                            "logprobs": choice_logprobs(done), "finish_reason": finish})
        finish_metrics(dones)
        rt.log_request(ctx, 200)
        return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": model,
                             "system_fingerprint": fp, "choices": choices, "usage": usage(dones)},
                            headers=ctx.headers())

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list[dict], usage_: dict | None = None) -> str:
        body: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model,
                                "system_fingerprint": fp, "choices": choices}
        if include_usage:
            body["usage"] = usage_
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def sse():
        dones: list[Done] = []
        status = 499
        try:
            async with asyncio.timeout(timeout):
                for i, (ids, ptext) in enumerate(prompts):
                    if req.echo:
                        yield chunk([{"text": ptext, "index": i, "logprobs": None, "finish_reason": None}])
                    pos = len(ptext) if req.echo else 0
                    async for item in one(i, ids):
                        if isinstance(item, Delta):
                            lps = completion_logprobs(item.logprobs, pos) if k is not None and item.logprobs \
                                else None
                            pos += len(item.text)
                            if item.text or lps:
                                yield chunk([{"text": item.text, "index": i, "logprobs": lps, "finish_reason": None}])
                        else:
                            dones.append(item)
                            _, finish = screened(item, ptext)
                            yield chunk([{"text": "", "index": i, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                yield chunk([], usage(dones))
            yield "data: [DONE]\n\n"
            status = 200
        except Exception as exc:
            err = generation_error(exc, timeout)
            status = err.status
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            rt.slots.release(served)
            rt.leave()
            finish_metrics(dones)
            rt.log_request(ctx, status)

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={**ctx.headers(), "Cache-Control": "no-cache"})
