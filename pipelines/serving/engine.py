"""Generation for the API: continuous batching for greedy requests, one-at-a-time for sampled ones.

`Engine(loaded, batching)` owns one loaded model. `engine.stream(ids, ...)` is an async iterator of `Delta`s
(text pieces as tokens arrive) ending with a `Done`; closing it early (client gone, timeout) cancels the
generation and frees its batch slot.

- Greedy requests (temperature 0, the default and the cacheable case) go to a long-lived transformers
  `ContinuousBatchingManager` (`model.init_continuous_batching`, explicit KV cache size), so concurrent requests
  share forward passes; tokens are pushed to the request's asyncio queue by the manager's result handler.
- Sampled requests (temperature > 0) run `model.generate` one at a time in a worker thread under a lock, with a
  streamer pushing tokens to the queue and a stopping criterion that ends the run on cancel. Reason: the manager
  takes ONE generation config; its per-request sampling processors (`per_request_processors=True`, per-request
  `temperature`/`top_p`/`top_k`) measured here made 8 concurrent greedy requests 20x slower (3.4 vs 19.7 tok/s)
  and a `top_k=1` request did not reproduce greedy output, so greedy traffic keeps the fast path.
- `mode="naive"` sends everything through the one-at-a-time path (the benchmark's baseline).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

log = logging.getLogger("llmops.serve")


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    text: str  # the whole completion


class EngineDead(RuntimeError):
    pass


class _Decoder:
    """Incremental detokenization: the new text of a growing token list, holding back an incomplete UTF-8 tail."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.emitted = ""

    def feed(self, tokens: list[int], final: bool = False) -> str:
        text = self.tok.decode(tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return ""
        if not text.startswith(self.emitted):  # tokenizers may re-merge a prefix; never emit twice
            return ""
        new, self.emitted = text[len(self.emitted):], text
        return new


class Engine:
    def __init__(self, loaded, mode: str, num_blocks: int, max_batch_tokens: int):
        from pipelines.models import lm

        self.loaded = loaded
        self.model, self.tok = loaded.model, loaded.tokenizer
        self.stop_ids = sorted({lm.end_of_turn_id(self.tok), self.tok.eos_token_id} - {None})
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.stop_ids[0]
        self.mode = mode
        self.active = 0  # requests generating now (batch occupancy, sampled by the metrics)
        self._lock = threading.Lock()  # the one-at-a-time path
        self._count_lock = threading.Lock()
        self.cb = None
        if mode == "continuous":
            from transformers import GenerationConfig
            from transformers.generation.configuration_utils import ContinuousBatchingConfig

            gen = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=self.stop_ids,
                                   pad_token_id=self.pad_id)
            self.cb = self.model.init_continuous_batching(
                generation_config=gen,
                continuous_batching_config=ContinuousBatchingConfig(num_blocks=num_blocks,
                                                                    max_batch_tokens=max_batch_tokens))
            self.cb.start()

    # ------------------------------------------------------------------ lifecycle
    def alive(self) -> bool:
        return self.cb is None or (self.cb.is_running() and self.cb.background_thread_status.fatal_error is None)

    def close(self) -> None:
        if self.cb is not None:
            try:
                self.cb.stop(block=True, timeout=30)
            except Exception:  # pragma: no cover - shutdown is best effort
                log.exception("stopping the batching manager")
            self.cb = None

    async def warmup(self) -> None:
        """One short request through each path, so the first real request does not pay the warm-up."""
        ids = self.tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        async for _ in self.stream(ids, max_new_tokens=2, temperature=0.0):
            pass

    def _enter(self) -> None:
        with self._count_lock:
            self.active += 1

    def _leave(self) -> None:
        with self._count_lock:
            self.active -= 1

    # ------------------------------------------------------------------ generation
    async def stream(self, ids: list[int], *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None) -> AsyncIterator[Delta | Done]:
        if self.cb is not None and temperature == 0.0:
            gen = self._stream_batched(ids, max_new_tokens)
        else:
            gen = self._stream_single(ids, max_new_tokens, temperature, top_p, seed)
        self._enter()
        try:
            async for item in gen:
                yield item
        finally:
            self._leave()
            await gen.aclose()

    def _finish(self, tokens: list[int], max_new_tokens: int) -> tuple[list[int], str, int]:
        for k, t in enumerate(tokens):
            if t in self.stop_ids:
                return tokens[:k], "stop", k + 1
        return tokens, "length" if len(tokens) >= max_new_tokens else "stop", len(tokens)

    async def _stream_batched(self, ids: list[int], max_new_tokens: int) -> AsyncIterator[Delta | Done]:
        cb = self.cb
        if cb is None or not self.alive():
            raise EngineDead("the batching engine is not running")
        queue: asyncio.Queue = asyncio.Queue()
        rid = uuid.uuid4().hex
        cb.register_result_handler(rid, queue.put_nowait)
        if cb.add_request(list(ids), request_id=rid, max_new_tokens=max_new_tokens, streaming=True,
                          eos_token_id=self.stop_ids) is None:
            raise EngineDead("the batching engine refused the request (stopping)")
        decoder = _Decoder(self.tok)
        finished = False
        try:
            while True:
                try:
                    out = await asyncio.wait_for(queue.get(), timeout=5.0)
                except asyncio.TimeoutError:
                    if not self.alive():
                        raise EngineDead("the batching engine stopped")
                    continue
                if out.error is not None:
                    finished = True
                    raise RuntimeError(f"generation failed: {out.error}")
                tokens = list(out.generated_tokens)
                body, reason, n = self._finish(tokens, max_new_tokens)
                done = out.is_finished() or reason == "stop" and len(body) < len(tokens)
                piece = decoder.feed(body, final=done)
                if piece:
                    yield Delta(piece)
                if done:
                    finished = out.is_finished()
                    yield Done(reason, n, decoder.emitted)
                    return
        finally:
            if not finished:
                cb.cancel_request(rid)
            with cb.output_router._lock:
                cb.output_router.result_handlers.pop(rid, None)

    async def _stream_single(self, ids: list[int], max_new_tokens: int, temperature: float, top_p: float,
                             seed: int | None) -> AsyncIterator[Delta | Done]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        engine = self

        class Streamer:
            first = True

            def put(self, value):
                if self.first:  # generate() first hands over the prompt
                    self.first = False
                    return
                loop.call_soon_threadsafe(queue.put_nowait, ("tok", value.reshape(-1).tolist()))

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancelled.is_set()

        def work():
            try:
                with engine._lock:
                    if cancelled.is_set():
                        return
                    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=engine.stop_ids,
                                                  pad_token_id=engine.pad_id, streamer=Streamer(),
                                                  stopping_criteria=StoppingCriteriaList([Cancelled()]))
                    if temperature > 0:
                        if seed is not None:
                            torch.manual_seed(seed)
                        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
                    else:
                        kwargs.update(do_sample=False)
                    x = torch.tensor([ids], dtype=torch.long)
                    with torch.inference_mode():
                        engine.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs)
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the request
                loop.call_soon_threadsafe(queue.put_nowait, ("err", exc))

        worker = threading.Thread(target=work, daemon=True, name="llmops-generate")
        worker.start()
        tokens: list[int] = []
        decoder = _Decoder(self.tok)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "err":
                    raise RuntimeError(f"generation failed: {value}")
                if kind == "tok":
                    tokens.extend(value)
                body, reason, n = self._finish(tokens, max_new_tokens)
                done = kind == "end" or len(body) < len(tokens)
                piece = decoder.feed(body, final=done)
                if piece:
                    yield Delta(piece)
                if done:
                    yield Done(reason, n, decoder.emitted)
                    return
        finally:
            cancelled.set()

    async def complete(self, ids: list[int], **kw) -> Done:
        done = None
        async for item in self.stream(ids, **kw):
            if isinstance(item, Done):
                done = item
        assert done is not None
        return done


def now_ms() -> float:
    return time.perf_counter() * 1000.0
