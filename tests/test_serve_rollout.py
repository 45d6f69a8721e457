"""Serving side of progressive delivery (issue 30): feedback API, arm routing from the rollout state, shadow copies.

Two real uvicorn servers on loopback (replicas A and B) serve one tmp registry (champion v1, challenger v2) and
share one request log, one feedback log and one rollout state file; traffic comes from the official `openai`
client and httpx. A third server replaces B to show a restart resumes the same step and assignments.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import openai
import pytest

from test_serve import Server, _promote, serve_config

KEYS = {"k1": "sk-ro-k1", "k2": "sk-ro-k2", "k3": "sk-ro-k3", "k4": "sk-ro-k4"}


def _app(tmp, registry, **over):
    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KeyStore

    cfg = serve_config(max_new_tokens=6, reload_poll_s=0.5, guard={"enabled": False},
                       request_log=str(tmp / "logs" / "requests.jsonl"), request_log_max_bytes=6000,
                       feedback_log=str(tmp / "logs" / "feedback.jsonl"), feedback_lookup_files=50,
                       rollout_state=str(tmp / "state" / "rollout.json"),
                       limits={"max_body_bytes": 20000, "max_prompt_tokens": 400, "max_tokens": 16,
                               "request_timeout_s": 60, "max_concurrent": 16, "rate_limit_rps": 50,
                               "rate_limit_burst": 200, "feedback_rate_limit_rps": 0.2,
                               "feedback_rate_limit_burst": 12}, **over)
    keys = KeyStore.from_env({"LLMOPS_API_KEYS": ",".join(f"{k}:{v}" for k, v in KEYS.items())})
    return create_app(cfg, registry, keys=keys)


@pytest.fixture(scope="module")
def fleet(base_model_dir, tmp_path_factory):
    from pipelines.models import registry as mlflow_registry
    from pipelines.models.lm import make_smoke_adapter
    from test_gate import registry_cfg

    adapter = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (adapter / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, adapter)
    tmp = tmp_path_factory.mktemp("rollout_serve")
    registry = registry_cfg(tmp)
    for v in (1, 2):
        cand = tmp / f"cand{v}"
        shutil.copytree(adapter, cand)
        (cand / "training_meta.json").write_text(json.dumps({"v": v}))
        assert _promote(tmp, registry, cand, base_model_dir)["version"] == v
    c = mlflow_registry.client(registry.tracking_uri)
    c.set_registered_model_alias(registry.model_name, "champion", "1")
    c.set_registered_model_alias(registry.model_name, "challenger", "2")
    a = Server(_app(tmp, registry))
    b = Server(_app(tmp, registry, shadow={"queue_size": 1, "concurrency": 1}))
    fleet = {"tmp": tmp, "registry": registry, "a": a, "b": b, "log": tmp / "logs" / "requests.jsonl",
             "feedback": tmp / "logs" / "feedback.jsonl", "state": tmp / "state" / "rollout.json"}
    yield fleet
    for s in (fleet["a"], fleet["b"]):
        s.stop()


def client(server, key="k1"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS[key], max_retries=0, timeout=120)


def chat(server, key="k1", text="What is the capital of France?", **kw):
    raw = client(server, key).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0, **kw)
    return raw.headers["x-request-id"], raw.headers["x-llmops-model-version"], raw.parse()


def rate(server, request_id, rating, key="k1", **kw):
    return httpx.post(server.url + "/v1/feedback", headers={"Authorization": f"Bearer {KEYS[key]}"},
                      json={"request_id": request_id, "rating": rating, **kw}, timeout=30)


def metric(server, prefix):
    """The sum of the Prometheus samples whose line starts with `prefix`."""
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def save_state(fleet, strategy, share=0.5, rollout_id=None):
    from pipelines.rollout.state import RolloutStore, Step, new_rollout

    steps = [Step(share=share if strategy == "canary" else 0.0, min_duration_s=0, min_requests=1, min_rated=0),
             Step(share=1.0, min_duration_s=0, min_requests=1, min_rated=0)]
    state = new_rollout(strategy, "1", "2", steps if strategy == "canary" else steps[:1], chosen_by="test",
                        rollout_id=rollout_id)
    RolloutStore(fleet["state"]).save(state)
    return state


def split_rollout_id(share=0.5):
    """A rollout id under which k1 gets the challenger and k2 the champion at `share` (assignment is a hash)."""
    from pipelines.rollout.state import assign_challenger

    for i in range(1000):
        rid = f"ro-test-{i}"
        if assign_challenger("k1", rid, share) and not assign_challenger("k2", rid, share):
            return rid
    raise AssertionError("no split id")


def all_lines(path):
    """Every line of a log, its rotated files included."""
    from pipelines.serving.request_log import log_files

    return [json.loads(x) for f in log_files(path) for x in f.read_text().splitlines()]


def lines_of(fleet, **match):
    return [x for x in all_lines(fleet["log"]) if all(x.get(k) == v for k, v in match.items())]


def wait_for(pred, timeout=30, what=""):
    deadline = time.time() + timeout
    while not (got := pred()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def test_feedback_is_logged_once_redacted_and_counted(fleet):
    from pipelines.serving.feedback import FIELDS, feedback_id

    a = fleet["a"]
    rid, version, _ = chat(a)
    r = rate(a, rid, 1, correction="Paris. Mail me at jane.doe@example.com", tags=["geo", "geo", "short"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duplicate"] is False and body["negative"] is False and body["scale"] == "thumbs"
    assert body["id"] == feedback_id("k1", rid) and body["model_version"] == version == "1"
    again = rate(a, rid, -1)  # a second rating of the same answer: idempotent, the first stands
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["negative"] is False
    lines = [x for x in all_lines(fleet["feedback"]) if x["request_id"] == rid]
    assert len(lines) == 1 and tuple(lines[0]) == FIELDS
    line = lines[0]
    assert line["key_id"] == "k1" and line["arm"] == "champion" and line["rating"] == 1 and line["tags"] == ["geo", "short"]
    assert "jane.doe" not in line["correction"] and "<EMAIL>" in line["correction"]
    assert line["pii_found"]["correction"] == {"EMAIL": 1} and len(line["correction_sha256"]) == 64
    assert metric(a, 'llmops_feedback_total{alias="champion",arm="champion",model_version="1",polarity="positive"}') == 1
    assert metric(a, "llmops_feedback_duplicates_total") == 1
    stars = rate(a, chat(a, text="Name a river.")[0], 2)  # 2 is a star rating, and a negative one
    assert stars.json()["scale"] == "stars" and stars.json()["negative"] is True


def test_feedback_bad_inputs(fleet):
    a = fleet["a"]
    rid = chat(a, key="k1", text="Name a colour.")[0]
    unknown = rate(a, "req-00000000000000000000", 1)
    other = rate(a, rid, 1, key="k2")  # k2 did not make that request
    assert unknown.status_code == other.status_code == 404
    # the same answer whether the id exists or not: nothing tells them apart but the id echoed back
    assert unknown.json()["error"]["message"].replace("req-00000000000000000000", rid) == \
        other.json()["error"]["message"] and unknown.json()["error"]["code"] == "request_not_found"
    rid = chat(a, key="k4", text="Name a shape.")[0]  # k4's own feedback bucket: 422s take tokens too
    for bad in ({"rating": 0}, {"rating": 6}, {"rating": 3, "scale": "thumbs"}, {"rating": -1, "scale": "stars"},
                {"rating": 1.5}, {"rating": True}, {"rating": "1"}, {"rating": 1, "tags": ["has space"]},
                {"rating": 1, "unknown_field": 1}):
        r = httpx.post(a.url + "/v1/feedback", headers={"Authorization": f"Bearer {KEYS['k4']}"},
                       json={"request_id": rid, **bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_value", (bad, r.text)
    assert httpx.post(a.url + "/v1/feedback", json={"request_id": rid, "rating": 1}).status_code == 401
    assert not [x for x in all_lines(fleet["feedback"]) if x["request_id"] == rid]  # nothing was logged
    # a flood: k3's own feedback bucket (burst 12, 0.2/s) runs dry; k3's chat bucket is untouched
    rid3 = chat(a, key="k3", text="Name a fruit.")[0]
    codes = [rate(a, rid3, 1, key="k3").status_code for _ in range(20)]
    assert codes[0] == 200 and set(codes[1:12]) == {200} and codes[-1] == 429, codes
    r = rate(a, rid3, 1, key="k3")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert chat(a, key="k3", text="Still served?")[2].choices  # chat has its own bucket
    assert len([x for x in all_lines(fleet["feedback"]) if x["request_id"] == rid3]) == 1  # counted once


def test_two_replicas_share_logs_state_and_feedback(fleet):
    a, b = fleet["a"], fleet["b"]
    state = save_state(fleet, "canary", 0.5, split_rollout_id(0.5))
    for s in (a, b):  # the challenger (v2) is loaded and the state read by both
        wait_for(lambda: (httpx.get(s.url + "/health").json()["rollout"] or {}).get("live"), what="rollout live")
    served = {}
    for s, name in ((a, "a"), (b, "b")):
        for key in ("k1", "k2"):
            rid, version, r = chat(s, key=key, text=f"Hello from {key} to {name}")
            served[(name, key)] = rid
            assert version == ("2" if key == "k1" else "1") and r.system_fingerprint == f"m:{version}"
    lines = {x["request_id"]: x for x in all_lines(fleet["log"])}
    replicas = {lines[rid]["replica"] for rid in served.values()}
    assert len(replicas) == 2  # one log, both replicas' lines in it
    for (name, key), rid in served.items():
        x = lines[rid]
        assert x["rollout_id"] == state.rollout_id and x["shadow_of"] is None
        assert x["arm"] == ("challenger" if key == "k1" else "champion")
    for s in (a, b):
        assert metric(s, f'llmops_arm_requests_total{{arm="challenger",model_version="2",rollout_id="{state.rollout_id}"'
                         ',status="200"}') == 1
        assert metric(s, "llmops_rollout_challenger_share") == 0.5
    # the monitoring reader counts both replicas' requests of this rollout
    from pipelines.monitoring.windows import read_request_log

    records = [x for x in read_request_log(fleet["log"]).records if x.get("rollout_id") == state.rollout_id]
    assert {x["replica"] for x in records} == replicas and len(records) == 4
    # feedback taken by the replica that did not serve the request (found in the shared log)
    r = rate(b, served[("a", "k1")], -1)
    assert r.status_code == 200 and r.json()["model_version"] == "2" and r.json()["negative"] is True
    fb = [x for x in all_lines(fleet["feedback"]) if x["request_id"] == served[("a", "k1")]][0]
    assert fb["arm"] == "challenger" and fb["rollout_id"] == state.rollout_id and fb["replica"] == lines[
        served[("b", "k1")]]["replica"]
    assert metric(b, 'llmops_feedback_total{alias="challenger",arm="challenger",model_version="2",'
                     'polarity="negative"}') == 1
    assert rate(a, served[("b", "k2")], 1, key="k1").status_code == 404  # another key's, on the other replica too


def test_a_state_change_applies_without_restart(fleet):
    from pipelines.rollout.state import RolloutStore

    a = fleet["a"]
    store = RolloutStore(fleet["state"])
    state = store.load()
    assert chat(a, key="k2", text="Before the step")[1] == "1"
    store.save(state.advanced(by="test"))  # share 0.5 -> 1.0: k2 moves to the challenger, no restart
    assert chat(a, key="k2", text="After the step")[1] == "2"
    assert httpx.get(a.url + "/health").json()["rollout"]["step_index"] == 1
    store.save(store.load().rolled_back(by="test", reason="test"))  # rolled back: everyone on the champion
    rid, version, _ = chat(a, key="k1", text="After the rollback")
    assert version == "1" and lines_of(fleet, request_id=rid)[0]["rollout_id"] is None
    assert httpx.get(a.url + "/health").json()["rollout"] is None


def test_a_restart_resumes_the_same_step_and_assignments(fleet):
    from pipelines.rollout.state import Step, assign_challenger, new_rollout, RolloutStore

    steps = [Step(0.05, 0, 1, 0), Step(0.5, 0, 1, 0), Step(1.0, 0, 1, 0)]
    state = new_rollout("canary", "1", "2", steps, chosen_by="test", rollout_id=split_rollout_id(0.5))
    RolloutStore(fleet["state"]).save(state.advanced(by="test"))  # on step 1 (share 0.5)
    b = fleet["b"]
    before = {k: chat(b, key=k, text=f"restart {k}")[1] for k in ("k1", "k2", "k3", "k4")}
    b.stop()
    fleet["b"] = b = Server(_app(fleet["tmp"], fleet["registry"], shadow={"queue_size": 1, "concurrency": 1}))
    wait_for(lambda: (httpx.get(b.url + "/health").json()["rollout"] or {}).get("live"), what="challenger loaded")
    assert httpx.get(b.url + "/health").json()["rollout"]["step_index"] == 1
    after = {k: chat(b, key=k, text=f"restart {k} again")[1] for k in before}
    assert after == before == {k: "2" if assign_challenger(k, state.rollout_id, 0.5) else "1" for k in before}
    assert before["k1"] == "2" and before["k2"] == "1"


def test_shadow_returns_only_the_champion_and_logs_the_challenger(fleet):
    from pipelines.serving.request_log import FIELDS

    a = fleet["a"]
    state = save_state(fleet, "shadow")
    wait_for(lambda: (httpx.get(a.url + "/health").json()["rollout"] or {}).get("shadowing"), what="shadow")
    ids = []
    for i, key in enumerate(("k1", "k2", "k1")):
        rid, version, r = chat(a, key=key, text=f"Shadow question {i}")
        assert version == "1" and r.system_fingerprint == "m:1"  # the user always gets the champion
        ids.append(rid)
    stream = client(a, "k2").chat.completions.create(model="m", messages=[{"role": "user", "content": "Stream it"}],
                                                      max_tokens=4, temperature=0, stream=True)
    assert {c.system_fingerprint for c in stream} == {"m:1"}
    shadows = wait_for(lambda: (s := lines_of(fleet, arm="shadow", rollout_id=state.rollout_id)) and len(s) >= 4
                       and s, what="4 shadow lines")
    user = {x["request_id"]: x for x in all_lines(fleet["log"]) if x["request_id"] in ids}
    assert set(ids) <= {x["shadow_of"] for x in shadows}
    for x in shadows:
        assert tuple(x) == FIELDS and x["model_version"] == "2" and x["alias"] == "challenger"
        assert x["status"] == 200 and x["response"] and x["request_id"] != x["shadow_of"]
        if x["shadow_of"] in user:  # queued after the user's answer was complete, same key
            assert x["ts"] >= user[x["shadow_of"]]["ts"] and x["key_id"] == user[x["shadow_of"]]["key_id"]
            assert user[x["shadow_of"]]["arm"] == "champion" and user[x["shadow_of"]]["rollout_id"] == state.rollout_id
    assert rate(a, shadows[0]["request_id"], 1, key=shadows[0]["key_id"]).status_code == 404  # never rateable
    # prompt drift reads what users sent: a shadow line repeats a prompt and is skipped
    from pipelines.monitoring.windows import read_request_log, request_log_window

    logged = read_request_log(fleet["log"]).records
    window = request_log_window(read_request_log(fleet["log"]))
    assert len(window.texts) == len([x for x in logged if x["arm"] != "shadow" and x["status"] < 400 and x["prompt"]])
    assert metric(a, 'llmops_shadow_requests_total{result="completed"}') >= 4
    assert metric(a, 'llmops_arm_requests_total{arm="shadow"') >= 4


def test_a_full_shadow_queue_drops_the_copy_and_counts_it(fleet):
    """Replica B's queue holds one copy: five answers completing at once leave four copies dropped, counted."""
    from pipelines.serving.shadow import Job

    b = fleet["b"]
    rt = b.app.state.runtime
    wait_for(lambda: (httpx.get(b.url + "/health").json()["rollout"] or {}).get("shadowing"), what="shadow on B")
    chat(b, key="k1", text="Start B's shadow worker")  # the queue and its worker exist from the first copy on
    wait_for(lambda: rt.shadow.queue is not None and rt.shadow.queue.empty(), what="B's worker")
    loop = rt.shadow.workers[0].get_loop()
    from pipelines.serving.runtime import Ctx
    from pipelines.serving.schemas import ChatRequest

    async def burst():
        ctx = Ctx("chat", key_id="k1", status=200)
        job = Job(req=ChatRequest(messages=[{"role": "user", "content": "copy"}]), request_id=ctx.request_id,
                  key_id="k1", rollout_id="x", model="m", mode="chat", rag=False, ids=[1, 2, 3], max_new=2,
                  base_model="none", queued_at=0.0)
        for _ in range(5):  # no await suspends in between: the worker cannot take one meanwhile
            await rt.shadow.submit(job, ctx)

    dropped = rt.shadow.counts["dropped"]
    asyncio.run_coroutine_threadsafe(burst(), loop).result(10)
    assert rt.shadow.counts["dropped"] == dropped + 4
    assert metric(b, 'llmops_shadow_requests_total{result="dropped"}') == dropped + 4
    assert httpx.get(b.url + "/health").json()["shadow"]["dropped"] == dropped + 4


def test_a_failing_challenger_falls_back_to_the_champion_and_its_errors_reach_the_analysis(fleet, repo_root):
    """Canary at share 1.0 on replica A with the challenger's engine broken (it raises, then it is dead): every
    client request, a stream included, still gets the champion's 200; each failed attempt is its own challenger line (5xx,
    fallback: true) that the rollout analysis counts as the challenger's errors. `m:challenger` is not retried."""
    from pipelines.config import config_from_params, load_params
    from pipelines.monitoring.online_eval import OnlineEvalConfig
    from pipelines.rollout import analysis
    from pipelines.rollout.config import RolloutConfig
    from pipelines.serving.engine import EngineDead

    a = fleet["a"]
    state = save_state(fleet, "canary", 1.0, "ro-test-fallback")
    wait_for(lambda: (r := httpx.get(a.url + "/health").json()["rollout"] or {}).get("rollout_id")
             == state.rollout_id and r.get("live"), what="the rollout on A")
    engine = a.app.state.runtime.slots.served["challenger"].engine
    fallbacks = metric(a, f'llmops_challenger_fallbacks_total{{model_version="2",rollout_id="{state.rollout_id}"')

    def broken(exc):
        async def stream(*args, **kw):
            raise exc
            yield  # an async generator, like the engine's
        return stream

    answered = []
    try:
        for i, exc in enumerate([RuntimeError("challenger engine broke")] * 2 + [EngineDead("challenger died")] * 2):
            engine.stream = broken(exc)
            rid, version, out = chat(a, key=f"k{i % 4 + 1}", text=f"Fallback question {i}?")
            assert version == "1" and out.system_fingerprint.endswith(":1") and out.choices[0].message.content
            answered.append(rid)
        engine.stream = broken(RuntimeError("challenger engine broke"))  # a stream: before its first byte
        raw = client(a, "k2").chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "Fallback stream?"}], max_tokens=4, temperature=0,
            stream=True)
        chunks = list(raw.parse())
        assert raw.headers["x-llmops-model-version"] == "1" and all(c.system_fingerprint.endswith(":1")
                                                                    for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        answered.append(raw.headers["x-request-id"])
        with pytest.raises(openai.InternalServerError):  # the client named the challenger: its error is its own
            client(a).chat.completions.create(model="m:challenger", messages=[{"role": "user", "content": "x?"}],
                                              max_tokens=4, temperature=0)
    finally:
        del engine.stream
    lines = [x for x in all_lines(fleet["log"]) if x.get("rollout_id") == state.rollout_id]
    failed = [x for x in lines if x.get("fallback")]
    assert sorted(x["status"] for x in failed) == [500, 500, 500, 503, 503]
    assert all(x["arm"] == "challenger" and x["model_version"] == "2" for x in failed)
    users = {x["request_id"]: x for x in lines if x["request_id"] in answered}
    assert len(users) == 5 and all(x["status"] == 200 and x["arm"] == "champion" and x["model_version"] == "1"
                                   and "fallback" not in x for x in users.values())
    assert metric(a, f'llmops_challenger_fallbacks_total{{model_version="2",rollout_id="{state.rollout_id}"') \
        == fallbacks + 5

    params = load_params(repo_root / "params.yaml")
    cfg = config_from_params("rollout", RolloutConfig, {}, params)
    arms, _ = analysis.arm_stats(lines, [], state, cfg.analysis,
                                 config_from_params("online_eval", OnlineEvalConfig, {}, params))
    assert arms["challenger"]["errors"] == arms["challenger"]["requests"] == 5
    assert arms["champion"]["errors"] == 0 and arms["champion"]["requests"] == 5
