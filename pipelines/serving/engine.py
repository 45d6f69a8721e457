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

OpenAI's decoding parameters come in a `SamplingParams` (pipelines.serving.sampling). Stop sequences work on both
paths: they are matched on the decoded text in `stream()` (pipelines.serving.stops), which holds back text that could
start a match and, on a match, ends the request (a batched one is cancelled in the manager, freeing its slot).
Penalties, logit_bias, logprobs, echo's prompt logprobs and grammar constraints (pipelines.serving.structured) need
per-request logits processing, which the manager does not do without the 20x slowdown above: such requests take
the one-at-a-time path, whose decode loop is our own (KV cache, one forward per token, `Sampler` choosing the token),
and `SamplingParams.unbatched_reason()` names why (the API counts it in /metrics).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from pipelines.serving.sampling import Sampler, SamplingParams, TokenLogprob
from pipelines.serving.stops import StopMatcher

log = logging.getLogger("llmops.serve")


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] | None = None  # of the tokens whose text this delta carries (when asked)
    tokens: int = 0  # tokens generated so far


@dataclass
class Done:
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    text: str  # the whole completion
    logprobs: list[TokenLogprob] | None = None  # every generated token's (when asked)
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's (completions echo + logprobs)
    grammar_seconds: float = 0.0  # time spent in the grammar mask (constrained requests)


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
    def __init__(self, loaded, mode: str, num_blocks: int, max_batch_tokens: int, unbatched_pause_ms: float = 0.0):
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
        self._grammars = None
        self._grammar_lock = threading.Lock()
        self.unbatched: dict[str, int] = {}  # requests sent one-at-a-time by their parameters, by reason
        # The batched path first: the one-at-a-time loop waits up to this long before each forward while batched
        # requests are generating. Both paths' forwards use every core, so running them side by side slows the
        # batch (many requests) as much as the single one; waiting gives the CPU to the batch, bounded so that a
        # one-at-a-time request still advances at least one token per pause (bench/results/serve_params.md).
        self.unbatched_pause_s = max(0.0, unbatched_pause_ms) / 1000.0
        self.batched_active = 0
        self._batch_idle = threading.Event()
        self._batch_idle.set()
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

    def _enter(self, batched: bool) -> None:
        with self._count_lock:
            self.active += 1
            if batched:
                self.batched_active += 1
                self._batch_idle.clear()

    def _leave(self, batched: bool) -> None:
        with self._count_lock:
            self.active -= 1
            if batched:
                self.batched_active -= 1
                if self.batched_active == 0:
                    self._batch_idle.set()

    def _yield_to_batch(self) -> None:
        """The one-at-a-time loop's pause before a forward: until no batched request generates, at most
        `unbatched_pause_s` (see __init__)."""
        if self.unbatched_pause_s > 0 and self.batched_active:
            self._batch_idle.wait(self.unbatched_pause_s)

    def grammars(self):
        """The model's grammar compiler (pipelines.serving.structured.Grammars), built on first use."""
        with self._grammar_lock:
            if self._grammars is None:
                from pipelines.serving.structured import Grammars

                self._grammars = Grammars(self.tok, int(self.model.config.vocab_size), self.stop_ids)
            return self._grammars

    def path_for(self, params: SamplingParams) -> tuple[str, str | None]:
        """("batched" | "single", why single): where a request with these parameters generates."""
        reason = params.unbatched_reason()
        if self.cb is None:
            return "single", "naive"
        return ("batched", None) if reason is None else ("single", reason)

    # ------------------------------------------------------------------ generation
    async def stream(self, ids: list[int], *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None, params: SamplingParams | None = None) -> AsyncIterator[Delta | Done]:
        p = params if params is not None else SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
        path, reason = self.path_for(p)
        if max_new_tokens <= 0:  # scoring the prompt only (completions echo): no decode step to batch
            path, reason = "single", "naive"
        batched = path == "batched"
        if batched:
            gen = self._stream_batched(ids, max_new_tokens)
        else:
            if reason != "naive":
                with self._count_lock:
                    self.unbatched[reason] = self.unbatched.get(reason, 0) + 1
            gen = self._stream_single(ids, max_new_tokens, p)
        self._enter(batched)
        try:
            if not p.stop:
                async for item in gen:
                    yield item
            else:
                async for item in self._with_stops(gen, p.stop):
                    yield item
        finally:
            self._leave(batched)
            await gen.aclose()

    @staticmethod
    async def _with_stops(gen: AsyncIterator[Delta | Done], stops: tuple[str, ...]) -> AsyncIterator[Delta | Done]:
        """Cuts the output before the first stop sequence (finish_reason "stop"), holding back possible starts."""
        m = StopMatcher(stops)
        pending: list[TokenLogprob] = []
        seen: list[TokenLogprob] = []
        asked = False

        def take(upto: int | None) -> list[TokenLogprob] | None:
            nonlocal pending
            if not asked:
                return None
            out = [e for e in pending if upto is None or e.offset < upto]
            pending = pending[len(out):]
            seen.extend(out)
            return out

        async for item in gen:
            if isinstance(item, Delta):
                if item.logprobs is not None:
                    asked = True
                    pending.extend(item.logprobs)
                safe, stopped = m.feed(item.text)
                lps = take(m.sent)
                if safe or lps:
                    yield Delta(safe, lps, item.tokens)
                if stopped:
                    yield Done("stop", item.tokens, m.text, seen if asked else None)
                    return
            else:
                tail = m.flush()
                lps = take(None)
                if tail or lps:
                    yield Delta(tail, lps, item.completion_tokens)
                yield Done(item.finish_reason, item.completion_tokens, m.text,
                           seen if asked else item.logprobs, item.prompt_logprobs, item.grammar_seconds)
                return

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
                    yield Delta(piece, None, len(body))
                if done:
                    finished = out.is_finished()
                    yield Done(reason, n, decoder.emitted)
                    return
        finally:
            if not finished:
                cb.cancel_request(rid)
            with cb.output_router._lock:
                cb.output_router.result_handlers.pop(rid, None)

    async def _stream_single(self, ids: list[int], max_new_tokens: int,
                             p: SamplingParams) -> AsyncIterator[Delta | Done]:
        """Our own decode loop in a worker thread (one request at a time, under a lock): prefill, then one forward
        per token through the KV cache, the `Sampler` choosing each token."""
        import torch

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        engine = self
        stop_ids = set(self.stop_ids)
        put = lambda *item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731

        def work():
            try:
                with engine._lock:
                    if cancelled.is_set():
                        return
                    model = engine.model
                    with torch.inference_mode():
                        x = torch.tensor([ids], dtype=torch.long)
                        out = model(input_ids=x, use_cache=True, logits_to_keep=0 if p.prompt_logprobs else 1)
                        sampler = Sampler(p, out.logits.shape[-1], engine.tok)
                        if p.prompt_logprobs:
                            put("prompt", sampler.prompt_logprobs(ids, out.logits[0]))
                        cache, logits = out.past_key_values, out.logits[0, -1]
                        n, reason = 0, "length"

                        def forward(chunk: list[int]):
                            nonlocal cache
                            engine._yield_to_batch()
                            o = model(input_ids=torch.tensor([chunk], dtype=torch.long), cache=cache, use_cache=True)
                            cache = o.past_key_values
                            return o.logits[0]

                        def jump(prev_logits):
                            """Jump-forward decoding: text the grammar forces is fed as tokens in one forward."""
                            nonlocal n
                            forced = sampler.forced_tokens(max_new_tokens - n)
                            if not forced:
                                return prev_logits
                            rows = forward(forced)
                            for k, f in enumerate(forced):
                                put("tok", f, sampler.entry(f, prev_logits if k == 0 else rows[k - 1]))
                            n += len(forced)
                            return rows[-1]

                        logits = jump(logits)
                        while n < max_new_tokens:
                            if cancelled.is_set():
                                return
                            tid, entry = sampler.step(logits)
                            n += 1
                            if tid in stop_ids:
                                reason = "stop"
                                break
                            put("tok", tid, entry)
                            if n >= max_new_tokens:
                                break
                            logits = jump(forward([tid])[-1])
                put("end", reason, n, sampler.grammar_seconds)
            except BaseException as exc:  # noqa: BLE001 - handed to the request
                put("err", exc, 0, 0.0)

        worker = threading.Thread(target=work, daemon=True, name="llmops-generate")
        worker.start()
        tokens: list[int] = []
        lps: list[TokenLogprob] = []
        pending: list[TokenLogprob] = []
        prompt_lps = None
        decoder = _Decoder(self.tok)
        try:
            while True:
                kind, *value = await queue.get()
                if kind == "err":
                    raise RuntimeError(f"generation failed: {value[0]}")
                if kind == "prompt":
                    prompt_lps = value[0]
                    continue
                if kind == "tok":
                    tid, entry = value
                    if entry is not None:
                        entry = entry._replace(offset=len(decoder.emitted))
                        lps.append(entry)
                        pending.append(entry)
                    tokens.append(tid)
                    piece = decoder.feed(tokens)
                    if piece or (pending and decoder.emitted):
                        yield Delta(piece, pending if p.logprobs else None, len(tokens))
                        pending = []
                    continue
                reason, n, grammar_s = value
                piece = decoder.feed(tokens, final=True)
                if piece or pending:
                    yield Delta(piece, pending if p.logprobs else None, len(tokens))
                yield Done(reason, n, decoder.emitted, lps if p.logprobs else None, prompt_lps, grammar_s)
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
