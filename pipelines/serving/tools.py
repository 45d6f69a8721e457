"""Tool calling (OpenAI `tools`, `tool_choice`, `parallel_tool_calls`) for a model whose chat template has no tool
format (SmolLM2's is plain ChatML): the functions are described in the system message in the Hermes/Qwen style, and
the model answers a call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, which constrained decoding
(pipelines.serving.structured) makes valid against the function's parameter schema:

- `tool_choice` "none": the tools are not shown and nothing is constrained (plain text);
- "auto" (the default with tools): free text, and a call may start at `<tool_call>` (then it is constrained);
- "required": the answer is one call of any function, nothing else (a bare compact JSON call, fewer tokens);
- a named function `{"type": "function", "function": {"name": ...}}`: one call of that function.
`parallel_tool_calls` false allows at most one call under "auto" (several otherwise).

Earlier turns of the client's tool loop are rendered the same way: an assistant message's `tool_calls` become its
`<tool_call>` text, a `tool` message's content is wrapped in `<tool_response>`. The answer's calls come back as
OpenAI `tool_calls` (ids `call_<hex>`, arguments a JSON string) with finish_reason "tool_calls"; streamed, each call is
a header delta (index, id, type, name, "") and an arguments delta, as OpenAI shapes them.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from pipelines.serving.errors import APIError
from pipelines.serving.structured import TOOL_BEGIN, TOOL_END, check_schema

MAX_TOOLS_BYTES = 8192  # the JSON of a request's `tools` above this is a 413 (it all goes into the prompt)
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass
class ToolSpec:
    functions: list[dict]  # {name, description, parameters}
    mode: str  # "none" | "auto" | "required" | "named"
    parallel: bool


def parse_tools(tools: list[Any] | None, tool_choice: Any, parallel: bool | None) -> ToolSpec | None:
    """The request's tools and choice, checked: 413 over MAX_TOOLS_BYTES, 400 naming what is wrong otherwise."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise APIError(400, "tool_choice was given without tools", "invalid_value", "tool_choice")
        return None
    size = len(json.dumps(tools))
    if size > MAX_TOOLS_BYTES:
        raise APIError(413, f"The tool definitions are {size} bytes of JSON; this server accepts at most "
                            f"{MAX_TOOLS_BYTES}", "tools_too_large", "tools")
    functions = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise APIError(400, f"Unsupported value for '{where}.type': {kind!r}; only 'function' tools are "
                                "supported", "unsupported_value", f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not NAME_RE.match(fn["name"]):
            raise APIError(400, f"Invalid '{where}.function.name': a function name is 1-64 letters, digits, "
                                "'_' or '-'", "invalid_value", f"{where}.function.name")
        params = fn.get("parameters", EMPTY_PARAMETERS)
        check_schema(params, f"{where}.function.parameters")
        functions.append({"name": fn["name"], "description": fn.get("description") or "", "parameters": params})
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise APIError(400, "Function names in 'tools' must be unique", "invalid_value", "tools")
    parallel = True if parallel is None else bool(parallel)
    if tool_choice is None or tool_choice == "auto":
        return ToolSpec(functions, "auto", parallel)
    if tool_choice in ("none", "required"):
        return ToolSpec(functions, tool_choice, parallel)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise APIError(400, f"tool_choice names the function {name!r}, which is not in 'tools'",
                           "invalid_value", "tool_choice")
        return ToolSpec(chosen, "named", False)
    raise APIError(400, f"Unsupported value for 'tool_choice': {json.dumps(tool_choice)[:100]}; use 'none', 'auto', "
                        "'required' or {'type': 'function', 'function': {'name': ...}}", "unsupported_value",
                   "tool_choice")


def system_text(spec: ToolSpec) -> str:
    sigs = "\n".join(json.dumps({"type": "function", "function": f}) for f in spec.functions)
    return ("You can call functions. Their signatures, one JSON object a line:\n<tools>\n" + sigs + "\n</tools>\n"
            "To call a function, answer with " + TOOL_BEGIN + '{"name": <function name>, "arguments": '
            "<arguments as a JSON object>}" + TOOL_END + ". A function's result comes back in <tool_response>.")


def render_call(name: str, arguments: str | dict) -> str:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f'{TOOL_BEGIN}{{"name": {json.dumps(name)}, "arguments": {args}}}{TOOL_END}'


def _call(body: str) -> dict | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}}


def parse_output(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a completed answer: the text outside the tags, the calls inside."""
    calls, content, pos = [], [], 0
    for m in re.finditer(re.escape(TOOL_BEGIN) + r"(.*?)" + re.escape(TOOL_END), text, flags=re.S):
        call = _call(m.group(1))
        if call is None:
            continue
        content.append(text[pos:m.start()])
        calls.append(call)
        pos = m.end()
    content.append(text[pos:])
    joined = "".join(content)
    if calls:
        joined = joined.strip()
    return (joined or None) if calls else text, calls


class ToolStream:
    """Streaming: text outside tags becomes content deltas (a possible `<tool_call>` start held back), each
    complete call a header delta and an arguments delta."""

    def __init__(self):
        self.buf = ""
        self.inside = False
        self.index = 0

    def _held(self) -> int:
        for k in range(min(len(TOOL_BEGIN) - 1, len(self.buf)), 0, -1):
            if self.buf.endswith(TOOL_BEGIN[:k]):
                return k
        return 0

    def _content(self, text: str) -> list[dict]:
        if not text or (self.index and not text.strip()):
            return []
        return [{"content": text}]

    def feed(self, text: str) -> list[dict]:
        self.buf += text
        out: list[dict] = []
        while True:
            if not self.inside:
                i = self.buf.find(TOOL_BEGIN)
                if i < 0:
                    keep = self._held()
                    out += self._content(self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return out
                out += self._content(self.buf[:i])
                self.buf, self.inside = self.buf[i:], True
            j = self.buf.find(TOOL_END)
            if j < 0:
                return out
            call = _call(self.buf[len(TOOL_BEGIN):j])
            if call is None:
                out += self._content(self.buf[:j + len(TOOL_END)])
            else:
                fn = call["function"]
                out.append({"tool_calls": [{"index": self.index, "id": call["id"], "type": "function",
                                            "function": {"name": fn["name"], "arguments": ""}}]})
                out.append({"tool_calls": [{"index": self.index, "function": {"arguments": fn["arguments"]}}]})
                self.index += 1
            self.buf, self.inside = self.buf[j + len(TOOL_END):], False

    def flush(self) -> list[dict]:
        rest, self.buf = self.buf, ""
        return self._content(rest)

    @property
    def called(self) -> bool:
        return self.index > 0
