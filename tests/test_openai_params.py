"""Issue 32: every OpenAI request parameter is honoured or refused, never ignored.

One real uvicorn server (a promoted champion, guard off) for the module. Each implemented row of the conformance
table (pipelines/serving/conformance.py) has a test here that drives it with the official `openai` client, sync,
async and streaming; `test_conformance_table_and_server_agree` walks the table (refused rows are 400 naming the
parameter, no-op rows are accepted, the rows match the schemas, the installed client's parameter lists and the docs
page). Real clients: lm-evaluation-harness `local-completions` against /v1/completions (accuracy equal to the
in-process evaluate's within 0.02) and LangChain's ChatOpenAI (stop, with_structured_output).
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from test_serve import Server, _promote, serve_config
from test_gate import registry_cfg

KEY = "sk-test-p1"
REPO = Path(__file__).resolve().parents[1]
Q = "What is the capital of France?"


@pytest.fixture(scope="module")
def srv(base_model_dir, tmp_path_factory):
    from pipelines.models.lm import make_smoke_adapter
    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KeyStore

    adapter = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (adapter / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, adapter)
    tmp = tmp_path_factory.mktemp("oai")
    registry = registry_cfg(tmp)
    cand = tmp / "cand"
    shutil.copytree(adapter, cand)
    assert _promote(tmp, registry, cand, base_model_dir)["version"] == 1
    cfg = serve_config(max_new_tokens=12, reload_poll_s=5.0, request_log=str(tmp / "logs" / "requests.jsonl"),
                       guard={"enabled": False},
                       limits={"max_body_bytes": 20000, "max_prompt_tokens": 400, "max_tokens": 64,
                               "request_timeout_s": 120, "max_concurrent": 32, "rate_limit_rps": 100,
                               "rate_limit_burst": 400})
    keys = KeyStore.from_env({"LLMOPS_API_KEYS": f"p1:{KEY}", "LLMOPS_ADMIN_KEY": "sk-test-padmin"})
    server = Server(create_app(cfg, registry, keys=keys))
    rt = server.app.state.runtime
    yield {"url": server.url, "base": base_model_dir, "tmp": tmp, "rt": rt,
           "client": openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=180),
           "engine": rt.slots.served["champion"].engine}
    server.stop()


def three(srv, **kw) -> list[dict]:
    """The same chat request through the official client: sync, async and streaming. Each result:
    {text, finish, tool_calls, logprobs}."""
    kw.setdefault("model", "m")
    kw.setdefault("messages", [{"role": "user", "content": Q}])

    def of(r):
        c = r.choices[0]
        calls = [{"name": t.function.name, "arguments": t.function.arguments} for t in c.message.tool_calls or []]
        lps = [(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs]) for e in c.logprobs.content] \
            if c.logprobs and c.logprobs.content is not None else None
        return {"text": c.message.content, "finish": c.finish_reason, "tool_calls": calls, "logprobs": lps}

    sync = of(srv["client"].chat.completions.create(**kw))

    async def run_async():
        async with openai.AsyncOpenAI(base_url=srv["url"] + "/v1", api_key=KEY, max_retries=0, timeout=180) as ac:
            return of(await ac.chat.completions.create(**kw))

    asy = asyncio.run(run_async())
    text, finish, calls, lps, chunks = [], None, {}, [], []
    for ch in srv["client"].chat.completions.create(stream=True, **kw):
        if not ch.choices:
            continue
        c = ch.choices[0]
        chunks.append(c.delta)
        if c.delta.content:
            text.append(c.delta.content)
        for t in c.delta.tool_calls or []:
            slot = calls.setdefault(t.index, {"name": None, "arguments": ""})
            if t.function and t.function.name:
                assert t.id and t.type == "function"  # the header delta carries id, type and name
                slot["name"] = t.function.name
            if t.function and t.function.arguments:
                slot["arguments"] += t.function.arguments
        if c.logprobs and c.logprobs.content:
            lps += [(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs]) for e in c.logprobs.content]
        finish = c.finish_reason or finish
    stream = {"text": "".join(text) if text or not calls else None, "finish": finish,
              "tool_calls": [calls[i] for i in sorted(calls)], "logprobs": lps or None, "deltas": chunks}
    return [sync, asy, stream]


def same(results, *keys):
    for k in keys:
        assert results[0][k] == results[1][k] == results[2][k], (k, [r[k] for r in results])


def bad(srv, status, code, param, path="/v1/chat/completions", **body):
    body.setdefault("model", "m")
    if path.endswith("chat/completions"):
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    else:
        body.setdefault("prompt", "hi")
    r = httpx.post(srv["url"] + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    err = r.json().get("error", {})
    assert r.status_code == status and err.get("code") == code and err.get("param") == param, (r.status_code, err)
    return err["message"]


def metric(srv, name: str, label: str) -> float:
    text = httpx.get(srv["url"] + "/metrics").text
    m = re.search(rf'^{name}\{{[^}}]*{label}[^}}]*\}} ([0-9.e+]+)$', text, flags=re.M)
    return float(m.group(1)) if m else 0.0


# ------------------------------------------------------------------------------------------------ chat rows

def test_basic_chat(srv):
    res = three(srv, max_tokens=8, temperature=0, user="u1", n=1, modalities=["text"])
    same(res, "text", "finish")
    assert res[0]["text"].strip() and res[0]["finish"] in ("stop", "length")
    r = srv["client"].chat.completions.create(model="m", messages=[{"role": "user", "content": Q}],
                                              max_completion_tokens=3, max_tokens=20)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"  # max_completion_tokens wins
    chunks = list(srv["client"].chat.completions.create(model="m", messages=[{"role": "user", "content": Q}],
                                                        max_tokens=3, stream=True,
                                                        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 3 and not chunks[-1].choices
    assert "'n'" in bad(srv, 400, "unsupported_value", "n", n=2)
    bad(srv, 400, "unsupported_value", "modalities", modalities=["text", "audio"])


def test_stop(srv):
    unbatched = dict(srv["engine"].unbatched)
    plain = srv["client"].chat.completions.create(model="m", messages=[{"role": "user", "content": Q}],
                                                  max_tokens=10, temperature=0).choices[0].message.content
    assert "Paris" in plain  # the case of issue 32: the answer without stop is cached first
    res = three(srv, max_tokens=10, temperature=0, stop=["Paris", "Rome"])
    same(res, "text", "finish")
    assert res[0]["text"] == plain[:plain.index("Paris")] and res[0]["finish"] == "stop"
    assert not any("P" in (d.content or "") for d in res[2]["deltas"])  # no piece of the stop sequence was sent
    one = three(srv, max_tokens=10, temperature=0, stop="capital")
    assert one[0]["text"] == plain[:plain.index("capital")] and one[2]["text"] == one[0]["text"]
    bad(srv, 400, "invalid_value", "stop", stop=["a", "b", "c", "d", "e"])
    assert srv["engine"].unbatched == unbatched  # stop sequences keep greedy requests on the batching path


def test_penalties(srv):
    prompt = [{"role": "user", "content": "Say the word yes five times: yes yes yes"}]
    base = srv["client"].chat.completions.create(model="m", messages=prompt, max_tokens=12).choices[0].message.content
    before = metric(srv, "llmops_unbatched_requests_total", 'reason="penalty"')
    res = three(srv, messages=prompt, max_tokens=12, frequency_penalty=2.0, presence_penalty=1.5)
    same(res, "text")
    assert res[0]["text"] != base
    assert res[0]["text"].lower().count("yes") < base.lower().count("yes") or base.lower().count("yes") == 0
    assert metric(srv, "llmops_unbatched_requests_total", 'reason="penalty"') >= before + 1  # (the rest: cache hits)
    bad(srv, 422, "invalid_value", "presence_penalty", presence_penalty=3)


def test_logit_bias(srv):
    tok = srv["engine"].tok
    plain = srv["client"].chat.completions.create(model="m", messages=[{"role": "user", "content": Q}],
                                                  max_tokens=4).choices[0].message.content
    first = tok(plain, add_special_tokens=False)["input_ids"][0]
    banned = three(srv, max_tokens=4, logit_bias={str(first): -100})
    same(banned, "text")
    assert tok(banned[0]["text"], add_special_tokens=False)["input_ids"][0] != first
    forced_id = tok(" banana", add_special_tokens=False)["input_ids"][0]
    forced = three(srv, max_tokens=3, logit_bias={str(forced_id): 100})
    same(forced, "text")
    assert forced[0]["text"] == tok.decode([forced_id] * 3)
    bad(srv, 400, "invalid_value", "logit_bias", logit_bias={"999999999": 5})


def test_seed(srv):
    kw = dict(max_tokens=8, temperature=1.2, top_p=0.95, seed=1234)
    res = three(srv, **kw)
    same(res, "text")  # the same seed, the same sampled answer (sync, async, stream)
    others = {srv["client"].chat.completions.create(model="m", messages=[{"role": "user", "content": Q}],
                                                    **{**kw, "seed": s}).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {res[0]["text"]}) > 1  # and different seeds do sample


def test_logprobs(srv):
    res = three(srv, max_tokens=5, logprobs=True, top_logprobs=3)
    same(res, "text", "logprobs")
    lps = res[0]["logprobs"]
    assert len(lps) == 5 and "".join(t for t, _, _ in lps) == res[0]["text"]
    for token, lp, top in lps:
        assert len(top) == 3 and top[0][0] == token and abs(top[0][1] - lp) < 1e-6 and lp <= 0  # greedy: the top
    bad(srv, 400, "invalid_value", "top_logprobs", logprobs=True, top_logprobs=21)


def test_response_format(srv):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    res = three(srv, max_tokens=48, response_format=rf,
                messages=[{"role": "user", "content": "Name the capital of France and its population as JSON."}])
    same(res, "text")
    for r in res:
        jsonschema.validate(json.loads(r["text"]), schema)
        assert r["finish"] == "stop"
    ask = "Give a JSON object with the keys name and country for Paris."
    obj = three(srv, max_tokens=48, response_format={"type": "json_object"}, messages=[{"role": "user", "content": ask}])
    for r in obj:
        assert isinstance(json.loads(r["text"]), dict) and r["finish"] == "stop"
    msg = bad(srv, 400, "invalid_schema", "response_format.json_schema.schema",
              response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                  "type": "object", "properties": {"a": {"type": "nonsense"}}}}})
    assert "properties/a/type" in msg and "nonsense" in msg
    msg = bad(srv, 400, "invalid_schema", "response_format.json_schema.schema",
              response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                  "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}})
    assert "cannot be compiled" in msg
    bad(srv, 400, "unsupported_value", "response_format.type", response_format={"type": "yaml"})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid_call(call):
    fn = {"get_weather": WEATHER, "get_time": TIME}[call["name"]]["function"]
    jsonschema.validate(json.loads(call["arguments"]), fn["parameters"])


def test_tools(srv):
    req = three(srv, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                max_tokens=40)
    same(req, "tool_calls", "finish")
    assert req[0]["finish"] == "tool_calls" and len(req[0]["tool_calls"]) == 1
    for r in req:
        for call in r["tool_calls"]:
            _valid_call(call)
    named = three(srv, messages=ASK, tools=[WEATHER, TIME], max_tokens=40,
                  tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c["name"] for c in named[0]["tool_calls"]] == ["get_time"] and named[2]["tool_calls"][0]["name"] == \
        "get_time"
    _valid_call(named[0]["tool_calls"][0])
    none = three(srv, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert all(not r["tool_calls"] and r["text"] and r["finish"] in ("stop", "length") for r in none)
    auto = three(srv, messages=ASK, tools=[WEATHER], max_tokens=40)  # auto: prose or a valid call
    for r in auto:
        assert r["tool_calls"] or r["text"]
        for call in r["tool_calls"]:
            _valid_call(call)

    # the client's tool loop: call -> tool result message -> final answer
    first = srv["client"].chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="required",
                                                  max_tokens=40)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21, "sky": "sunny"})}]
    final = srv["client"].chat.completions.create(model="m", messages=history, tools=[WEATHER], tool_choice="none",
                                                  max_tokens=16)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls

    big = {"type": "function", "function": {"name": "big", "description": "x" * 9000, "parameters": {
        "type": "object", "properties": {}}}}
    bad(srv, 413, "tools_too_large", "tools", tools=[big])
    bad(srv, 400, "invalid_schema", "tools[0].function.parameters",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}])
    bad(srv, 400, "invalid_value", "tool_choice", tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "nope"}})


# ------------------------------------------------------------------------------------------------ completions

def comp3(srv, **kw) -> list[dict]:
    kw.setdefault("model", "m")

    def of(r):
        return [{"text": c.text, "finish": c.finish_reason, "logprobs": c.logprobs} for c in r.choices]

    sync = of(srv["client"].completions.create(**kw))

    async def run_async():
        async with openai.AsyncOpenAI(base_url=srv["url"] + "/v1", api_key=KEY, max_retries=0, timeout=180) as ac:
            return of(await ac.completions.create(**kw))

    asy = asyncio.run(run_async())
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    for ch in srv["client"].completions.create(stream=True, **kw):
        for c in ch.choices:
            texts.setdefault(c.index, []).append(c.text)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    stream = [{"text": "".join(texts[i]), "finish": finish.get(i), "logprobs": None} for i in sorted(texts)]
    return [sync, asy, stream]


def test_completions(srv):
    tok = srv["engine"].tok
    prompt = "The capital of France is"
    res = comp3(srv, prompt=prompt, max_tokens=6, user="u2", n=1)
    assert res[0][0]["text"] == res[1][0]["text"] == res[2][0]["text"] and res[0][0]["text"].strip()
    assert res[0][0]["finish"] == res[2][0]["finish"] == "length"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    multi = comp3(srv, prompt=[ids, "The capital of Italy is"], max_tokens=6)
    for r in multi:
        assert len(r) == 2 and r[0]["text"] == res[0][0]["text"]  # token ids = the same text
    word = res[0][0]["text"].split()[0]
    stopped = comp3(srv, prompt=prompt, max_tokens=6, stop=[word])
    for r in stopped:
        assert word not in r[0]["text"] and r[0]["finish"] == "stop"
    default = srv["client"].completions.create(model="m", prompt="Once upon a time")
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens
    chunks = list(srv["client"].completions.create(model="m", prompt=prompt, max_tokens=2, stream=True,
                                                   stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 2
    bad(srv, 400, "unsupported_value", "n", "/v1/completions", n=3)
    bad(srv, 404, "model_not_found", "model", "/v1/completions", model="other")


def test_completions_logprobs_echo(srv):
    import torch

    tok, model = srv["engine"].tok, srv["engine"].model
    prompt = "The capital of France is Paris"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    for max_tokens in (0, 1):
        r = srv["client"].completions.create(model="m", prompt=prompt, max_tokens=max_tokens, echo=True, logprobs=2)
        c = r.choices[0]
        assert c.text.startswith(prompt)
        lp = c.logprobs
        assert len(lp.tokens) == len(ids) + max_tokens and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert lp.text_offset[0] == 0 and "".join(lp.tokens) == c.text
    with torch.inference_mode():
        ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    for pos in range(1, len(ids)):
        assert abs(lp.token_logprobs[pos] - float(ref[pos - 1, ids[pos]])) < 1e-3
        assert len(lp.top_logprobs[pos]) <= 2 and max(lp.top_logprobs[pos].values()) >= lp.token_logprobs[pos] - 1e-6
    gen = comp3(srv, prompt="The capital of France is", max_tokens=3, logprobs=1)
    assert gen[0][0]["text"] == gen[1][0]["text"] == gen[2][0]["text"]
    assert len(gen[0][0]["logprobs"].tokens) == 3 and gen[0][0]["logprobs"].text_offset[0] == 0
    bad(srv, 400, "invalid_value", "logprobs", "/v1/completions", logprobs=6)


def test_completions_sampling(srv):
    kw = dict(prompt="My favourite animal is", max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    res = comp3(srv, **kw)
    assert res[0][0]["text"] == res[1][0]["text"] == res[2][0]["text"]
    pen = comp3(srv, prompt="yes yes yes yes", max_tokens=6, frequency_penalty=2.0, presence_penalty=2.0)
    plain = srv["client"].completions.create(model="m", prompt="yes yes yes yes", max_tokens=6).choices[0].text
    assert pen[0][0]["text"] == pen[2][0]["text"] and pen[0][0]["text"].count("yes") <= plain.count("yes")
    tid = srv["engine"].tok(" banana", add_special_tokens=False)["input_ids"][0]
    forced = comp3(srv, prompt="Hello", max_tokens=2, logit_bias={str(tid): 100})
    assert forced[0][0]["text"] == forced[2][0]["text"] == " banana banana"


# ------------------------------------------------------------------------------------------------ the table

def test_conformance_table_and_server_agree(srv):
    from openai.types import completion_create_params as comp_params
    from openai.types.chat import completion_create_params as chat_params

    from pipelines.serving import conformance as conf
    from pipelines.serving.schemas import ChatRequest, CompletionRequest

    source = Path(__file__).read_text()
    for ep, rows, schema, official in (("chat", conf.CHAT, ChatRequest, chat_params.CompletionCreateParamsBase),
                                       ("completions", conf.COMPLETIONS, CompletionRequest,
                                        comp_params.CompletionCreateParamsBase)):
        names = [p.name for p in rows]
        assert len(names) == len(set(names))
        # every parameter of the installed official client is a row (stream is in its streaming variants)
        assert set(official.__annotations__) | {"stream"} <= set(names), set(official.__annotations__) - set(names)
        accepted = {p.name for p in rows if p.status != conf.REFUSED}
        assert accepted == set(schema.model_fields), accepted ^ set(schema.model_fields)
        path = "/v1/chat/completions" if ep == "chat" else "/v1/completions"
        for p in rows:
            if p.status in (conf.IMPLEMENTED, conf.EXTENSION):
                assert p.test and f"def {p.test}(" in source, p.name
            elif p.status == conf.REFUSED:
                msg = bad(srv, 400, "unsupported_parameter", p.name, path, max_tokens=1, **{p.name: p.example})
                assert p.name in msg
                for v in p.neutral:  # the neutral value asks for nothing: accepted
                    body = {"model": "m", "max_tokens": 1, p.name: v}
                    body.update({"messages": [{"role": "user", "content": "hi"}]} if ep == "chat" else
                                {"prompt": "hi"})
                    assert httpx.post(srv["url"] + path, json=body, timeout=120,
                                      headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, p.name
            elif p.status == conf.NOOP:
                r = srv["client"].chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=1, **{p.name: p.example})
                assert r.choices[0].message.content is not None, p.name
        bad(srv, 400, "unsupported_parameter", "frobnicate", path, frobnicate=1)  # in no row: refused too
    page = REPO / "docs" / "serving" / "conformance.md"
    assert page.read_text() == conf.markdown(), "regenerate: python -m pipelines.serving.conformance > " + str(page)


# ------------------------------------------------------------------------------------------------ real clients

MC_ITEMS = 6  # the first records of the project's multiple-choice set


def test_lm_eval_local_completions_matches_in_process_evaluate(srv, monkeypatch, tmp_path):
    """lm-evaluation-harness `local-completions` (echo + logprobs on /v1/completions) scores the same items as the
    in-process evaluate's multiple_choice family; the accuracies agree within 0.02."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    import lm_eval
    import numpy as np
    from lm_eval.tasks import TaskManager

    from pipelines.evaluation.runner import ModelContext
    from pipelines.evaluation.tasks import FAMILIES, TaskSpec, load_examples
    from pipelines.models import lm

    spec = TaskSpec(name="mc", type="multiple_choice", path=str(REPO / "data/sample/eval/mc_harmless.jsonl"),
                    max_examples=MC_ITEMS, max_new_tokens=0, enabled=True)
    records = load_examples(spec)
    engine = srv["engine"]
    tok = engine.tok
    family = FAMILIES["multiple_choice"]
    ctx = ModelContext(engine.model, tok, batch_size=4, max_prompt_tokens=400, max_length=512, on_gpu=False)
    with engine._lock:  # the in-process evaluate on the served model object (the server is idle here)
        outputs = family.infer(ctx, records, spec)
    in_process = float(np.mean(family.columns(records, outputs, None)["acc"]))

    # the same items as lm-eval sees them: the chat-formatted prompt, each choice closed by the end-of-turn token
    eot = tok.convert_ids_to_tokens(lm.end_of_turn_id(tok))
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"context": tok.apply_chat_template(
        [{"role": "user", "content": r["question"]}], add_generation_prompt=True, tokenize=False),
        "conts": [c + eot for c in r["choices"]], "answer": r["answer"]}) + "\n" for r in records))
    (tmp_path / "llmops_mc.yaml").write_text(
        "task: llmops_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: conts\n"
        "doc_to_target: answer\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\n")
    out = lm_eval.simple_evaluate(
        model="local-completions", tasks=["llmops_mc"], task_manager=TaskManager(include_path=str(tmp_path)),
        model_args={"model": "m", "base_url": srv["url"] + "/v1/completions", "tokenizer": str(srv["base"]),
                    "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_retries": 1,
                    "num_concurrent": 1}, batch_size=1)
    served = out["results"]["llmops_mc"]["acc,none"]
    print(f"lm-eval local-completions acc {served:.3f}, in-process evaluate acc {in_process:.3f} ({len(records)} items)")
    assert abs(served - in_process) <= 0.02, (served, in_process)


def test_langchain_chat_openai_stop_and_structured_output(srv):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(model="m", base_url=srv["url"] + "/v1", api_key=KEY, temperature=0, max_tokens=10,
                     max_retries=0, timeout=180)
    plain = llm.invoke(Q).content
    cut = llm.invoke(Q, stop=["Paris"]).content
    assert "Paris" in plain and cut == plain[:plain.index("Paris")]
    streamed = "".join(c.content for c in llm.stream(Q, stop=["Paris"]))
    assert streamed == cut

    class City(BaseModel):
        name: str = Field(max_length=24)
        country: str = Field(max_length=24)

    structured = ChatOpenAI(model="m", base_url=srv["url"] + "/v1", api_key=KEY, temperature=0, max_tokens=48,
                            max_retries=0, timeout=180).with_structured_output(City, method="json_schema",
                                                                               strict=True)
    city = structured.invoke("Which city is the capital of France? Answer with its name and country.")
    assert isinstance(city, City) and city.name and city.country
    tooled = ChatOpenAI(model="m", base_url=srv["url"] + "/v1", api_key=KEY, temperature=0, max_tokens=48,
                        max_retries=0, timeout=180).with_structured_output(City, method="function_calling")
    assert isinstance(tooled.invoke("Which city is the capital of France?"), City)


def test_the_one_at_a_time_path_gives_way_to_batched_requests_at_most_its_pause():
    """serve.batching.unbatched_pause_ms: before each forward the one-at-a-time loop waits while batched requests
    generate, never longer than the pause, and not at all when none does (bench_serve --mixed --pauses measures
    what it buys). The wait only: no model is loaded."""
    import threading
    import time

    from pipelines.serving.engine import Engine

    engine = Engine.__new__(Engine)  # the scheduling state alone
    engine.active, engine.batched_active, engine._count_lock = 0, 0, threading.Lock()
    engine._batch_idle = threading.Event()
    engine._batch_idle.set()
    engine.unbatched_pause_s = 0.4

    def waited() -> float:
        t = time.perf_counter()
        engine._yield_to_batch()
        return time.perf_counter() - t

    assert waited() < 0.1  # no batched request: no wait
    engine._enter(True)
    assert engine.batched_active == 1 and 0.35 <= waited() < 2.0  # a batch generating: waits the whole pause
    threading.Timer(0.1, engine._leave, args=(True,)).start()
    assert waited() < 0.35 and engine.batched_active == 0  # the batch ends: the wait ends with it
    engine._enter(False)  # an unbatched request does not make another one wait
    assert engine.batched_active == 0 and waited() < 0.1
