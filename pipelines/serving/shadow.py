"""Shadow traffic: while a shadow rollout runs, the challenger answers a copy of each chat request, off the path.

The chat route hands a copy over only once the champion's answer is complete and sent (`Shadow.after` returns a
Starlette background task, which runs after the response's last byte). The copy waits in a bounded queue
(`serve.shadow.queue_size`); a full queue drops it (`llmops_shadow_requests_total{result="dropped"}` and a warning
in the server log), so shadowing can never slow, block or fail a user's request. `serve.shadow.concurrency`
workers generate the copies; they take no `serve.limits.max_concurrent` slot and skip the response cache.

The challenger gets exactly the prompt and the engine parameters the champion got (the same token ids: after the
input guard's redaction and RAG retrieval; the same stop, penalties, logprobs and grammar constraint) when both
versions share a base model (the same tokenizer); otherwise the request is prepared again for the challenger
(retrieval and the input guard run again) and the tokenizer-bound parameters (grammar constraint, logit_bias) are
left out of the copy. The answer is one request-log line with `arm`
"shadow", its own request_id, `shadow_of` = the user's request_id, and the user's key_id; it is never returned. The
output guard does not screen it (its counters stay about what users received); the rollout analysis scores the
logged answers.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.background import BackgroundTask

from pipelines.serving.engine import Delta, Done
from pipelines.serving.errors import APIError
from pipelines.serving.reload import Served
from pipelines.serving.runtime import Ctx, Runtime
from pipelines.serving.schemas import ChatRequest

log = logging.getLogger("llmops.serve.shadow")


@dataclass
class Job:
    req: ChatRequest
    request_id: str
    key_id: str | None
    rollout_id: str | None
    model: str | None
    mode: str
    rag: bool
    ids: list[int]
    max_new: int
    base_model: str
    queued_at: float
    params: Any = None  # the champion's pipelines.serving.sampling.SamplingParams (None: from the request)


class Shadow:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.queue: asyncio.Queue[Job] | None = None
        self.workers: list[asyncio.Task] = []
        self.counts = {"enqueued": 0, "completed": 0, "failed": 0, "skipped": 0, "dropped": 0}

    def after(self, req: ChatRequest, ctx: Ctx, rag: bool, ids: list[int], max_new: int, served: Served,
              params: Any = None) -> BackgroundTask | None:
        """The background task that queues the copy of this request, or None when no shadow rollout routed it."""
        if not ctx.shadow:
            return None
        job = Job(req=req, request_id=ctx.request_id, key_id=ctx.key_id, rollout_id=ctx.rollout_id,
                  model=ctx.model, mode=ctx.mode, rag=rag, ids=list(ids), max_new=max_new,
                  base_model=served.base_model, queued_at=0.0, params=params)
        return BackgroundTask(self.submit, job, ctx)

    def _start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.rt.cfg.shadow.queue_size)
        self.workers = [asyncio.get_running_loop().create_task(self._work(), name=f"llmops-shadow-{i}")
                        for i in range(self.rt.cfg.shadow.concurrency)]

    async def submit(self, job: Job, ctx: Ctx) -> None:
        """Runs after the user's response was sent. Never raises, never waits."""
        try:
            if ctx.status != 200:  # the user got an error: nothing to compare
                return
            if self.queue is None:
                self._start()
            job.queued_at = time.perf_counter()
            self.queue.put_nowait(job)
            self.counts["enqueued"] += 1
            self.rt.metrics.shadow.labels("enqueued").inc()
            self.rt.metrics.shadow_queue.set(self.queue.qsize())
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            self.rt.metrics.shadow.labels("dropped").inc()
            n = self.counts["dropped"]
            if n == 1 or n % 100 == 0:
                log.warning("shadow queue full (%d): dropped the copy of %s (%d dropped so far)",
                            self.rt.cfg.shadow.queue_size, job.request_id, n)
        except Exception:
            log.exception("shadow submit failed")

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            job = await self.queue.get()
            self.rt.metrics.shadow_queue.set(self.queue.qsize())
            try:
                result = await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shadow copy of %s failed", job.request_id)
                result = "failed"
            finally:
                self.queue.task_done()
            self.counts[result] += 1
            self.rt.metrics.shadow.labels(result).inc()

    async def _run(self, job: Job) -> str:
        rt = self.rt
        served = rt.slots.acquire(rt.cfg.challenger.alias)
        if served is None:
            return "skipped"
        ctx = Ctx("shadow", key_id=job.key_id)
        ctx.arm, ctx.rollout_id, ctx.shadow_of = "shadow", job.rollout_id, job.request_id
        ctx.alias, ctx.version, ctx.model, ctx.mode = served.alias, served.version, job.model, job.mode
        ctx.prompt = next((m.text() for m in reversed(job.req.messages) if m.role == "user"),
                          job.req.messages[-1].text())
        share = None
        done: Done | None = None
        ttft = None
        try:
            params = job.params
            if served.base_model == job.base_model:
                ids, max_new = job.ids, job.max_new
                ctx.prompt_tokens = len(ids)
            else:
                ids, max_new = await asyncio.to_thread(self._prepare, job, ctx, served)
                if params is not None:  # token ids and grammars belong to the champion's tokenizer
                    params = dataclasses.replace(params, constraint=None, logit_bias={})
            share = rt.metrics.cpu_share()
            gen = served.engine.stream(ids, max_new_tokens=max_new, params=params) if params is not None else \
                served.engine.stream(ids, max_new_tokens=max_new, temperature=job.req.temperature,
                                     top_p=job.req.top_p, seed=job.req.seed)
            try:
                async with asyncio.timeout(rt.cfg.limits.request_timeout_s):
                    async for item in gen:
                        if isinstance(item, Delta):
                            if ttft is None:
                                ttft = ctx.ms()
                        else:
                            done = item
            finally:
                await gen.aclose()
        except TimeoutError:
            rt.log_request(ctx, 504)
            return "failed"
        except APIError as exc:
            rt.log_request(ctx, exc.status)
            return "failed"
        except Exception as exc:  # the guard refusing the copy, a dead engine...: logged as a failed shadow
            log.warning("shadow copy of %s: %s: %s", job.request_id, type(exc).__name__, exc)
            rt.log_request(ctx, 500)
            return "failed"
        finally:
            rt.slots.release(served)
            if share is not None:
                ctx.cost_usd = rt.metrics.end_share(share, (ctx.prompt_tokens or 0) +
                                                    (done.completion_tokens if done else 0))
                ctx.cpu_s = share.seconds
        if done is None:
            rt.log_request(ctx, 500)
            return "failed"
        rt.log_request(ctx, 200, done.text, done.completion_tokens, ttft)
        return "completed"

    def _prepare(self, job: Job, ctx: Ctx, served: Served) -> tuple[list[int], int]:
        ids, max_new = self.rt.prepare(job.req, ctx, served, job.rag)
        if ctx.pending_input is not None:
            self.rt.guard.enforce(ctx.pending_input.finish())
        return ids, max_new

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued copy is answered (tests, shutdown); False on timeout."""
        if self.queue is None:
            return True
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        for t in self.workers:
            t.cancel()
        for t in self.workers:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self.workers = []
        self.queue = None

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queue.qsize() if self.queue is not None else 0, **self.counts}
