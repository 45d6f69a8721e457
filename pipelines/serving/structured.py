"""Grammar-constrained decoding with xgrammar: `response_format` json_object / json_schema and tool calls.

Measured here (bench/results/serve_params.md, 2 CPU cores, SmolLM2-135M, transformers 5): xgrammar 0.2.9 compiles a
small JSON schema in ~10 ms (tokenizer info once per model, ~0.3 s) and its token mask works with our own decode loop
on CPU; llguidance 1.9 worked too but its mask cost several times more per token here; lm-format-enforcer 0.11's
transformers integration does not import with transformers 5 (it checks for a removed symbol). So xgrammar.

`Grammars(tokenizer, vocab_size, stop_ids)` (one per loaded model, built lazily) compiles constraints, cached by the
canonical JSON of what was asked (an LRU). A `Constraint` hands out one `Matcher` per request: `mask(scores)` sets
the logits of tokens that cannot continue the grammar to -inf, `accept(token)` advances it, `terminated()` says the
grammar is complete and a stop token was taken. The output is compact JSON (no free whitespace): a small model given
free whitespace can emit newlines until max_tokens; for the same reason an integer without bounds is compiled with
the range JSON holds exactly (`bound_integers`).

Errors are the API's: a schema that is not a valid JSON Schema, or that xgrammar cannot compile, is a 400
`invalid_schema` naming the problem.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from pipelines.serving.errors import APIError

TOOL_BEGIN, TOOL_END = "<tool_call>", "</tool_call>"


def check_schema(schema: Any, where: str) -> None:
    """400 invalid_schema unless `schema` is a valid JSON Schema (Draft 2020-12 meta-schema)."""
    import jsonschema

    if not isinstance(schema, (dict, bool)):
        raise APIError(400, f"Invalid schema for {where}: a JSON Schema must be an object, got "
                            f"{type(schema).__name__}", "invalid_schema", where)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise APIError(400, f"Invalid schema for {where}: at {path}: {exc.message}", "invalid_schema",
                       where) from None


JSON_SAFE_INT = 2**53 - 1


def bound_integers(schema: Any) -> Any:
    """A copy of `schema` where an integer with no bounds gets the range JSON numbers hold exactly (+-(2**53-1)):
    the answer still validates against the original, and a small model cannot emit digits until max_tokens."""
    if isinstance(schema, list):
        return [bound_integers(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bound_integers(v) for k, v in schema.items()}
    kind = out.get("type")
    if (kind == "integer" or (isinstance(kind, list) and "integer" in kind)) and not (
            {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"} & set(out)):
        out.update(minimum=-JSON_SAFE_INT, maximum=JSON_SAFE_INT)
    return out


class Matcher:
    def __init__(self, compiled, stop_ids: list[int], vocab_size: int):
        import xgrammar as xgr

        self.xgr = xgr
        self.m = xgr.GrammarMatcher(compiled, override_stop_tokens=stop_ids)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, scores) -> None:
        self.m.fill_next_token_bitmask(self.bitmask, 0)
        self.xgr.apply_token_bitmask_inplace(scores.view(1, -1), self.bitmask)

    def accept(self, tid: int) -> None:
        if not self.m.accept_token(tid):
            raise RuntimeError(f"the grammar rejected token {tid}")

    def try_accept(self, tid: int) -> bool:
        return bool(self.m.accept_token(tid))

    def forced_text(self) -> str:
        return self.m.find_jump_forward_string()

    def terminated(self) -> bool:
        return self.m.is_terminated()


class Constraint:
    def __init__(self, compiled, key: str, kind: str, owner: "Grammars"):
        self.compiled, self.key, self.kind, self.owner = compiled, key, kind, owner

    def matcher(self) -> Matcher:
        return Matcher(self.compiled, self.owner.stop_ids, self.owner.vocab_size)


class Grammars:
    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int], max_cached: int = 64):
        import xgrammar as xgr

        self.vocab_size, self.stop_ids = vocab_size, list(stop_ids)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_ids)
        self.compiler = xgr.GrammarCompiler(info)
        self._cache: OrderedDict[str, Constraint] = OrderedDict()
        self._lock = threading.Lock()
        self.max_cached = max_cached

    def _get(self, key: str, kind: str, build, where: str) -> Constraint:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            compiled = build()
        except Exception as exc:  # xgrammar raises RuntimeError / InvalidJSONError / ValueError with a message
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise APIError(400, f"Invalid schema for {where}: it cannot be compiled to a grammar: {msg}",
                           "invalid_schema", where) from None
        c = Constraint(compiled, key, kind, self)
        with self._lock:
            self._cache[key] = c
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return c

    def json_object(self) -> Constraint:
        return self._get("json_object", "json_object",
                         lambda: self.compiler.compile_json_schema({"type": "object"}, any_whitespace=False),
                         "response_format")

    def json_schema(self, schema: dict, strict: bool) -> Constraint:
        check_schema(schema, "response_format.json_schema.schema")
        key = "schema:" + json.dumps([schema, strict], sort_keys=True)
        return self._get(key, "json_schema", lambda: self.compiler.compile_json_schema(
            json.dumps(bound_integers(schema)), any_whitespace=False, strict_mode=True),
            "response_format.json_schema.schema")

    def tool_calls(self, functions: list[dict], mode: str, parallel: bool) -> Constraint:
        """Tool calls. mode "auto": free text in which a call may start at `<tool_call>`, then it is
        `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` with the arguments constrained by the function's
        parameter schema (several calls with `parallel`); "required": the whole answer is ONE compact call
        `{"name": ..., "arguments": {...}}` of any of `functions` (no tags, no free whitespace: fewer tokens)."""
        from xgrammar.structural_tag import JSONSchemaFormat, StructuralTag, TagFormat, TriggeredTagsFormat

        key = "tools:" + json.dumps([functions, mode, parallel], sort_keys=True)
        if mode == "required":
            calls = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                       "arguments": bound_integers(f["parameters"])},
                      "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
            schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
            return self._get(key, "tools", lambda: self.compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, strict_mode=True), "tools")
        tags = [TagFormat(begin=f'{TOOL_BEGIN}{{"name": {json.dumps(f["name"])}, "arguments": ',
                          content=JSONSchemaFormat(json_schema=bound_integers(f["parameters"])),
                          end=f"}}{TOOL_END}")
                for f in functions]
        fmt = TriggeredTagsFormat(triggers=[TOOL_BEGIN], tags=tags, at_least_one=False, stop_after_first=not parallel)
        return self._get(key, "tools", lambda: self.compiler.compile_structural_tag(StructuralTag(format=fmt)),
                         "tools")
