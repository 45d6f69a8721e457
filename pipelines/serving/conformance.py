"""The single source of truth for which OpenAI request parameters the API honours (issue 32).

Every request parameter of OpenAI's chat completions and (legacy) completions is a row here, with its status:

- `implemented`: honoured, with the test in tests/test_openai_params.py that covers it (through the official
  `openai` client, sync, async and streaming);
- `refused`: a request that sets it (to anything but null or its neutral value) gets 400 `unsupported_parameter`
  naming it;
- `no-op`: accepted and changes nothing in the output, because it only concerns OpenAI's platform (storage,
  dashboards, abuse tracking, cache routing, service tiers);
- `extension`: a parameter of this server, not OpenAI's.

`check_request(body, endpoint)` enforces the refusals (and refuses a parameter that is in no row at all) before the
body is parsed; `markdown()` renders docs/serving/conformance.md (`python -m pipelines.serving.conformance > ...`).
tests/test_openai_params.py walks the table: every refused row is sent and must be a 400 naming it, every no-op row
must be accepted, every implemented row names a test that exists, the rows match the request schemas' fields and
the parameter lists of the installed `openai` client, and the docs page equals `markdown()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.serving.errors import APIError

IMPLEMENTED, REFUSED, NOOP, EXTENSION = "implemented", "refused", "no-op", "extension"
BATCHED, SINGLE = "batched", "one-at-a-time"


@dataclass(frozen=True)
class Param:
    name: str
    status: str
    note: str
    test: str | None = None  # implemented: the covering test in tests/test_openai_params.py
    path: str | None = None  # implemented: where such a request generates (BATCHED / SINGLE / "both")
    neutral: tuple = ()  # refused: values that ask for nothing and are accepted (besides null)
    example: Any = None  # refused / no-op: a value the table-walking test sends


_ONE_AT_A_TIME = ("one-at-a-time (counted in `llmops_unbatched_requests_total{reason}` of /metrics)")

CHAT: tuple[Param, ...] = (
    Param("messages", IMPLEMENTED, "system, developer (as system), user, assistant (with `tool_calls`), tool "
          "messages; text content or text parts", "test_basic_chat", BATCHED),
    Param("model", IMPLEMENTED, "`<name>`, `<name>:<alias>`, `<name>-rag`; 404 `model_not_found` otherwise",
          "test_basic_chat", BATCHED),
    Param("max_tokens", IMPLEMENTED, "cap `serve.limits.max_tokens`", "test_basic_chat", BATCHED),
    Param("max_completion_tokens", IMPLEMENTED, "same as max_tokens (wins over it)", "test_basic_chat", BATCHED),
    Param("stream", IMPLEMENTED, "SSE chunks + `[DONE]`", "test_basic_chat", BATCHED),
    Param("stream_options", IMPLEMENTED, "`include_usage` honoured; `include_obfuscation` is a no-op (no "
          "obfuscation padding is sent)", "test_basic_chat", BATCHED),
    Param("temperature", IMPLEMENTED, "0 (default) is greedy and batched; > 0 samples " + _ONE_AT_A_TIME,
          "test_seed", "both"),
    Param("top_p", IMPLEMENTED, "nucleus sampling when temperature > 0", "test_seed", SINGLE),
    Param("seed", IMPLEMENTED, "a per-request generator: the same seed gives the same sampled answer", "test_seed",
          SINGLE),
    Param("stop", IMPLEMENTED, "a string or up to 4 strings (400 above), matched on decoded text, cut before the "
          "match with finish_reason `stop`; held back while streaming", "test_stop", BATCHED),
    Param("presence_penalty", IMPLEMENTED, "-2..2, OpenAI's formula on the generated tokens; " + _ONE_AT_A_TIME,
          "test_penalties", SINGLE),
    Param("frequency_penalty", IMPLEMENTED, "-2..2, OpenAI's formula on the generated tokens; " + _ONE_AT_A_TIME,
          "test_penalties", SINGLE),
    Param("logit_bias", IMPLEMENTED, "token id -> -100..100 added to the logits; " + _ONE_AT_A_TIME,
          "test_logit_bias", SINGLE),
    Param("logprobs", IMPLEMENTED, "log-softmax of the model's raw logits; " + _ONE_AT_A_TIME, "test_logprobs",
          SINGLE),
    Param("top_logprobs", IMPLEMENTED, "0..20 (400 above), needs logprobs", "test_logprobs", SINGLE),
    Param("response_format", IMPLEMENTED, "`text`, `json_object`, `json_schema` (strict or not: always "
          "constrained) by xgrammar; an invalid schema is 400 `invalid_schema`; " + _ONE_AT_A_TIME,
          "test_response_format", SINGLE),
    Param("tools", IMPLEMENTED, "function tools; arguments constrained to each function's parameter schema; "
          "definitions over 8192 bytes of JSON are 413 `tools_too_large`; " + _ONE_AT_A_TIME, "test_tools",
          SINGLE),
    Param("tool_choice", IMPLEMENTED, "`none`, `auto`, `required`, a named function", "test_tools", SINGLE),
    Param("parallel_tool_calls", IMPLEMENTED, "true (default): `auto` may make several calls; false: at most one. "
          "`required` and a named function make exactly one", "test_tools", SINGLE),
    Param("n", IMPLEMENTED, "1 only: n > 1 is 400 `unsupported_value`", "test_basic_chat", BATCHED),
    Param("user", IMPLEMENTED, "the sticky key of arm routing when the request has no API key", "test_basic_chat",
          BATCHED),
    Param("modalities", IMPLEMENTED, "`[\"text\"]` only: audio is 400 `unsupported_value`", "test_basic_chat",
          BATCHED),
    Param("metadata", NOOP, "OpenAI stores it with the completion for its dashboard; every request here is in the "
          "request log anyway", example={"team": "a"}),
    Param("store", NOOP, "OpenAI's stored completions; every request here is in the request log anyway",
          example=True),
    Param("service_tier", NOOP, "OpenAI's processing tiers; one tier here", example="auto"),
    Param("prompt_cache_key", NOOP, "OpenAI's prompt-cache routing hint; it does not change the output",
          example="k1"),
    Param("prompt_cache_retention", NOOP, "OpenAI's prompt-cache retention; it does not change the output",
          example="in_memory"),
    Param("prompt_cache_options", NOOP, "OpenAI's prompt-cache options; they do not change the output",
          example={}),
    Param("safety_identifier", NOOP, "OpenAI's abuse-tracking id; the request log has the key id", example="u1"),
    Param("audio", REFUSED, "no audio output", example={"voice": "alloy", "format": "wav"}),
    Param("function_call", REFUSED, "deprecated by OpenAI: use tool_choice", neutral=("none",), example="auto"),
    Param("functions", REFUSED, "deprecated by OpenAI: use tools", neutral=([],),
          example=[{"name": "f", "parameters": {"type": "object", "properties": {}}}]),
    Param("prediction", REFUSED, "no predicted-output decoding", example={"type": "content", "content": "x"}),
    Param("reasoning_effort", REFUSED, "not a reasoning model", example="low"),
    Param("verbosity", REFUSED, "no verbosity control", example="low"),
    Param("web_search_options", REFUSED, "no web search", example={}),
    Param("moderation", REFUSED, "OpenAI's moderation; this server's guard (serve.guard) is configured by the "
          "operator", example={"type": "auto"}),
    Param("rag", EXTENSION, "answer from the top-k retrieved chunks (or model `<name>-rag`); the answer carries "
          "`citations`", "test_basic_chat", BATCHED),
)

COMPLETIONS: tuple[Param, ...] = (
    Param("model", IMPLEMENTED, "as chat (no `-rag`)", "test_completions", BATCHED),
    Param("prompt", IMPLEMENTED, "a string, a list of strings, a list of token ids or a list of lists (one "
          "choice per prompt, `index` in order); raw text, no chat template", "test_completions", BATCHED),
    Param("max_tokens", IMPLEMENTED, "default 16 as OpenAI; 0 with echo scores the prompt only",
          "test_completions", BATCHED),
    Param("stream", IMPLEMENTED, "SSE `text_completion` chunks + `[DONE]`", "test_completions", BATCHED),
    Param("stream_options", IMPLEMENTED, "`include_usage`", "test_completions", BATCHED),
    Param("echo", IMPLEMENTED, "the prompt text before the completion, with the prompt's logprobs when asked "
          "(streamed: the prompt text comes first, its logprobs only without stream)",
          "test_completions_logprobs_echo", BATCHED),
    Param("logprobs", IMPLEMENTED, "0..5 (400 above): tokens, token_logprobs, top_logprobs, text_offset; "
          + _ONE_AT_A_TIME, "test_completions_logprobs_echo", SINGLE),
    Param("temperature", IMPLEMENTED, "as chat", "test_completions_sampling", "both"),
    Param("top_p", IMPLEMENTED, "as chat", "test_completions_sampling", SINGLE),
    Param("seed", IMPLEMENTED, "as chat", "test_completions_sampling", SINGLE),
    Param("stop", IMPLEMENTED, "as chat", "test_completions", BATCHED),
    Param("presence_penalty", IMPLEMENTED, "as chat", "test_completions_sampling", SINGLE),
    Param("frequency_penalty", IMPLEMENTED, "as chat", "test_completions_sampling", SINGLE),
    Param("logit_bias", IMPLEMENTED, "as chat", "test_completions_sampling", SINGLE),
    Param("n", IMPLEMENTED, "1 only: n > 1 is 400 `unsupported_value`", "test_completions", BATCHED),
    Param("user", IMPLEMENTED, "as chat", "test_completions", BATCHED),
    Param("best_of", REFUSED, "no server-side best-of", neutral=(1,), example=3),
    Param("suffix", REFUSED, "no fill-in-the-middle", neutral=("",), example="end"),
)

TABLES = {"chat": CHAT, "completions": COMPLETIONS}
ROWS = {ep: {p.name: p for p in rows} for ep, rows in TABLES.items()}


def check_request(body: Any, endpoint: str) -> None:
    """400 `unsupported_parameter` for a refused parameter that asks for something, or a parameter in no row."""
    if not isinstance(body, dict):
        return
    rows = ROWS[endpoint]
    for key, value in body.items():
        row = rows.get(key)
        if row is None:
            raise APIError(400, f"Unsupported parameter: '{key}' is not a parameter of this endpoint "
                                f"(see docs/serving/conformance.md)", "unsupported_parameter", key)
        if row.status == REFUSED and value is not None and value not in row.neutral:
            raise APIError(400, f"Unsupported parameter: '{key}' is not supported by this server ({row.note})",
                           "unsupported_parameter", key)


def markdown() -> str:
    lines = ["# OpenAI API conformance", "",
             "<!-- generated by `python -m pipelines.serving.conformance > docs/serving/conformance.md`; "
             "tests/test_openai_params.py fails when this page and pipelines/serving/conformance.py disagree -->",
             "",
             "Every request parameter of OpenAI's chat completions and completions, and what this server does with "
             "it. **implemented**: honoured, covered by the named test in `tests/test_openai_params.py` (official "
             "`openai` client: sync, async and streaming). **refused**: a request that sets it gets HTTP 400 with "
             "`code: unsupported_parameter` and `param` naming it (null, or the neutral value shown, is accepted). "
             "**no-op**: accepted, changes nothing (it concerns OpenAI's platform only). A parameter in no row is "
             "refused the same way.", "",
             "Path: greedy requests (temperature 0) with no per-token processing share the continuous-batching "
             "engine (`batched`); parameters that need per-request logits processing generate one request at a "
             "time (`one-at-a-time`), counted by reason in `llmops_unbatched_requests_total` on `/metrics`; "
             "`serve.batching.unbatched_pause_ms` makes that path wait (up to so long per token) while batched "
             "requests generate, so that a mixed load keeps the batch's throughput. "
             "Every parameter that changes the output is part of the response cache key.", ""]
    for ep, title in (("chat", "POST /v1/chat/completions"), ("completions", "POST /v1/completions")):
        lines += [f"## {title}", "", "| parameter | status | path | notes | test |", "|---|---|---|---|---|"]
        for p in TABLES[ep]:
            note = p.note + (f" (accepted: {', '.join(repr(v) for v in p.neutral)})" if p.neutral else "")
            test = f"`{p.test}`" if p.test else ""
            lines.append(f"| `{p.name}` | {p.status} | {p.path or ''} | {note.replace('|', '/')} | {test} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
