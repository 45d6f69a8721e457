"""From an OpenAI request to what the engine does and how the answer is shaped (issue 32).

`chat_plan(req, engine)` checks the parameters OpenAI answers with 400 (stop count and length, top_logprobs cap,
logit_bias keys, n, modalities, response_format, tools: see pipelines.serving.conformance), compiles the grammar
of `response_format` / `tools` (pipelines.serving.structured), puts the tool descriptions into the system message
(pipelines.serving.tools), and returns a `ChatPlan`: the engine's `SamplingParams`, the part of the response cache
key that the parameters make, and the shapers of the answer (message, streamed deltas, logprobs).
`completion_plan(req, engine)` does the same for /v1/completions.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any

from pipelines.serving.errors import APIError
from pipelines.serving.sampling import (MAX_COMPLETION_LOGPROBS, MAX_TOP_LOGPROBS, SamplingParams, TokenLogprob)
from pipelines.serving.stops import MAX_STOP_CHARS, MAX_STOPS
from pipelines.serving.structured import TOOL_BEGIN, TOOL_END
from pipelines.serving.tools import ToolSpec, ToolStream, parse_output, parse_tools, system_text

_COUNTERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def count_unbatched(metrics, engine, params: SamplingParams) -> None:
    """`llmops_unbatched_requests_total{reason}`: requests the parameters sent one-at-a-time (on the app's registry)."""
    path, reason = engine.path_for(params)
    if path != "single" or reason == "naive":
        return
    reg = metrics.registry
    counter = _COUNTERS.get(reg)
    if counter is None:
        from prometheus_client import Counter

        counter = _COUNTERS[reg] = Counter("llmops_unbatched_requests", "requests generated one at a time "
                                           "because of their parameters (sampling, grammar, penalty, logit_bias, "
                                           "logprobs)", ["reason"], registry=reg)
    counter.labels(reason).inc()


def _stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"Invalid 'stop': at most {MAX_STOPS} stop sequences, got {len(stops)}",
                       "invalid_value", "stop")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise APIError(400, f"Invalid 'stop': each stop sequence must be 1..{MAX_STOP_CHARS} characters",
                           "invalid_value", "stop")
    return tuple(stops)


def _logit_bias(bias: dict | None, vocab: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for k, v in (bias or {}).items():
        try:
            tid = int(k)
        except ValueError:
            tid = -1
        if not 0 <= tid < vocab:
            raise APIError(400, f"Invalid 'logit_bias': key {k!r} is not a token id of this model (0..{vocab - 1})",
                           "invalid_value", "logit_bias")
        if not -100 <= v <= 100:
            raise APIError(400, f"Invalid 'logit_bias': the bias of token {k} must be in -100..100",
                           "invalid_value", "logit_bias")
        out[tid] = float(v)
    return out


def _n(n: int | None) -> None:
    if n is not None and n != 1:
        raise APIError(400, f"Unsupported value: 'n' must be 1 on this server (got {n})", "unsupported_value", "n")


def _base_params(req, engine) -> SamplingParams:
    _n(req.n)
    return SamplingParams(temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                          presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                          logit_bias=_logit_bias(req.logit_bias, int(engine.model.config.vocab_size)),
                          stop=_stops(req.stop))


# ------------------------------------------------------------------------------------------------------ chat

def chat_logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    if entries is None:
        return None

    def one(tid_text: str, lp: float) -> dict:
        return {"token": tid_text, "logprob": lp, "bytes": list(tid_text.encode("utf-8"))}

    return {"content": [{**one(e.text, e.logprob), "top_logprobs": [one(t.text, t.logprob) for t in e.top]}
                        for e in entries], "refusal": None}


@dataclass
class ChatPlan:
    params: SamplingParams
    tools: ToolSpec | None = None
    response_format: str = "text"
    _stream: ToolStream | None = field(default=None, repr=False)

    _forced: list[str] = field(default_factory=list, repr=False)

    @property
    def calls_tools(self) -> bool:
        return self.tools is not None and self.tools.mode != "none"

    @property
    def forced_call(self) -> bool:
        """required / named: the whole answer is one bare JSON call (pipelines.serving.structured.tool_calls)."""
        return self.tools is not None and self.tools.mode in ("required", "named")

    @staticmethod
    def _as_tagged(text: str) -> str:
        return f"{TOOL_BEGIN}{text}{TOOL_END}"

    def cache_part(self) -> str:
        return json.dumps([self.params.cache_key_part(), self.response_format,
                           self.tools.mode if self.tools else None])

    def message(self, text: str, finish_reason: str) -> tuple[dict, str]:
        """The answer's `message` and finish_reason (tool_calls when the answer is calls)."""
        if self.calls_tools:
            content, calls = parse_output(self._as_tagged(text) if self.forced_call else text)
            if calls:
                return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, finish_reason

    def deltas(self, text: str) -> list[dict]:
        """Streaming: the chunk deltas for the next piece of text."""
        if not self.calls_tools:
            return [{"content": text}] if text else []
        if self.forced_call:  # one JSON call: sent whole at the end (header delta + arguments delta)
            self._forced.append(text)
            return []
        if self._stream is None:
            self._stream = ToolStream()
        return self._stream.feed(text)

    def final(self, finish_reason: str) -> tuple[list[dict], str]:
        """Streaming: deltas left at the end, and the finish_reason."""
        if self.forced_call:
            self._stream = ToolStream()
            out = self._stream.feed(self._as_tagged("".join(self._forced)))
            out += self._stream.flush()
            return out, "tool_calls" if self._stream.called else finish_reason
        if not self.calls_tools or self._stream is None:
            return [], finish_reason
        rest = self._stream.flush()
        return rest, "tool_calls" if self._stream.called else finish_reason


def _response_format(rf: dict | None, engine):
    if rf is None:
        return None, "text"
    kind = rf.get("type")
    if kind in (None, "text"):
        return None, "text"
    if kind == "json_object":
        return engine.grammars().json_object(), "json_object"
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise APIError(400, "Invalid 'response_format.json_schema': it needs a 'name' and a 'schema'",
                           "invalid_value", "response_format.json_schema")
        return engine.grammars().json_schema(js["schema"], bool(js.get("strict"))), "json_schema"
    raise APIError(400, f"Unsupported value for 'response_format.type': {kind!r}; use 'text', 'json_object' or "
                        "'json_schema'", "unsupported_value", "response_format.type")


def chat_plan(req, engine) -> ChatPlan:
    """Checks and compiles the request's parameters; rewrites req.messages to describe the tools."""
    from pipelines.serving.schemas import ChatMessage

    p = _base_params(req, engine)
    if req.modalities is not None and list(req.modalities) != ["text"]:
        raise APIError(400, f"Unsupported value: 'modalities' {req.modalities} (only ['text'])", "unsupported_value",
                       "modalities")
    if req.top_logprobs is not None:
        if req.top_logprobs > MAX_TOP_LOGPROBS:
            raise APIError(400, f"Invalid 'top_logprobs': {req.top_logprobs} is above the maximum of "
                                f"{MAX_TOP_LOGPROBS}", "invalid_value", "top_logprobs")
        if not req.logprobs and req.top_logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs' set to true", "invalid_value", "top_logprobs")
    p.logprobs, p.top_logprobs = bool(req.logprobs), int(req.top_logprobs or 0)
    tools = parse_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    grammar, fmt = _response_format(req.response_format, engine)
    if grammar is not None and tools is not None and tools.mode != "none":
        raise APIError(400, "response_format json_object / json_schema together with tools is not supported; "
                            "set tool_choice 'none' or drop response_format", "unsupported_value",
                       "response_format")
    if tools is not None and tools.mode != "none":
        grammar = engine.grammars().tool_calls(tools.functions, "auto" if tools.mode == "auto" else "required",
                                               tools.parallel)
        text = system_text(tools)
        msgs = list(req.messages)
        if msgs[0].role in ("system", "developer"):
            msgs[0] = ChatMessage(role="system", content=msgs[0].text() + "\n\n" + text)
        else:
            msgs.insert(0, ChatMessage(role="system", content=text))
        req.messages = msgs
    p.constraint = grammar
    return ChatPlan(p, tools, fmt)


# ------------------------------------------------------------------------------------------------ completions

def completion_logprobs(entries: list[TokenLogprob], start_offset: int = 0) -> dict:
    """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs ({token: logprob}), text_offset."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = start_offset
    for e in entries:
        tokens.append(e.text)
        lps.append(e.logprob)
        tops.append({t.text: t.logprob for t in e.top} if e.logprob is not None else None)
        offsets.append(pos)
        pos += len(e.text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def completion_plan(req, engine) -> tuple[SamplingParams, int | None]:
    """(params, logprobs k or None) for a completions request."""
    p = _base_params(req, engine)
    k = req.logprobs
    if k is not None and k > MAX_COMPLETION_LOGPROBS:
        raise APIError(400, f"Invalid 'logprobs': {k} is above the maximum of {MAX_COMPLETION_LOGPROBS}",
                       "invalid_value", "logprobs")
    if k is not None:
        p.logprobs, p.top_logprobs = True, k
        p.prompt_logprobs = bool(req.echo)
    return p, k


def prompt_list(prompt) -> list[str | list[int]]:
    """The prompts of a completions request: str, [str], [int] or [[int]] -> one entry per choice."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(x, int) for x in prompt):
        return [list(prompt)]
    return list(prompt)
