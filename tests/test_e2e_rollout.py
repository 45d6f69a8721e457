"""Progressive delivery on real processes: the llmops_rollout DAG on a real Airflow scheduler decides canary rollouts
from live traffic and ratings, and a shadow rollout never shows the challenger's answers.

It shares the drift loop's session (tests/conftest.py `airflow_loop`: the serving API and `llmops airflow up` on the
reproduced e2e workspace), so the suite pays the start-up once. The challenger is a new registered version of the
champion's own artifacts (no training: what a rollout decides here is the live evidence, not the model). Traffic
comes from the official `openai` client (sticky per `user`), and a scripted rater posts thumbs to /v1/feedback:

(a) a challenger the rater dislikes: the first look, with no traffic yet, holds (insufficient data); then the
    analysis rolls it back, with 0 failed client requests, the champion untouched and every user back on it;
(b) a challenger rated as well as the champion advances through every step to champion (tiny step minimums and a
    rollout clock of a few seconds in the test's params); the LLMOps page in headless Chromium draws the rollout;
(c) a shadow rollout returns only the champion's answers while the challenger's are logged beside them.
The rollouts start as promote starts them (pipelines/rollout/lifecycle.start), and the first is announced with the
`llmops/challenger_deployed` Asset event the lifecycle's hand-over emits (here through Airflow's REST API).
A server restart mid-rollout (same step, same assignments) is tests/test_serve_rollout.py's.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from e2e_support import mark, set_params

# (run alone, the first test also carries the workspace reproduction and Airflow's start-up)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

STEPS = [{"share": 0.5, "min_duration_s": 0, "min_requests": 4, "min_rated": 4},
         {"share": 1.0, "min_duration_s": 0, "min_requests": 4, "min_rated": 4}]
TIMINGS: dict[str, float] = {}


@contextlib.contextmanager
def in_workspace(ws: Path):
    old = os.environ.get("LLMOPS_ROOT")
    os.environ["LLMOPS_ROOT"] = str(ws)
    try:
        yield
    finally:
        os.environ.pop("LLMOPS_ROOT") if old is None else os.environ.__setitem__("LLMOPS_ROOT", old)


@pytest.fixture(scope="module")
def rollout(airflow_loop):
    """The rollout's settings (read by the DAG's tasks when they run), the rollout DAG unpaused, and a challenger
    version registered from the champion's artifacts."""
    started = time.monotonic()
    ws, api = airflow_loop["ws"], airflow_loop["api"]
    set_params(ws, {
        ("rollout", "steps"): STEPS,
        ("rollout", "shadow", "min_requests"): 10_000,  # the shadow scenario only looks at what users get
        ("rollout", "analysis", "min_requests"): 6, ("rollout", "analysis", "min_rated"): 6,
        ("rollout", "analysis", "min_scored"): 6,
        # a loose non-inferiority margin, so that a dozen ratings per arm can decide (the calibration of the
        # defaults is bench/bench_rollout.py's business); the guardrails stay at params.yaml's
        ("rollout", "analysis", "success"): {"negative_feedback_rate": 0.6},
    })
    from pipelines.models import registry as mlflow_registry
    from pipelines.models.registry import RegistryConfig

    params = yaml.safe_load((ws / "params.yaml").read_text())
    with in_workspace(ws):
        reg = RegistryConfig(**params["registry"])
        client = mlflow_registry.client(reg.tracking_uri)
        champion = mlflow_registry.get_alias_version(client, reg.model_name, reg.alias)
    api.set_paused("llmops_rollout", False)
    env = {"ws": ws, "api": api, "serve": airflow_loop["serve"], "registry": reg, "client": client,
           "champion": str(champion.version), "source": champion.source, "run_id": champion.run_id,
           "seen": airflow_loop["seen"]["llmops_rollout"], "home": airflow_loop["home"],
           "state": ws / params["rollout"]["state_path"], "log": ws / params["serve"]["request_log"]}
    TIMINGS["setup"] = time.monotonic() - started
    yield env
    api.set_paused("llmops_rollout", True)
    print(f"\nrollout e2e timings (s): {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}, "
          f"total {sum(TIMINGS.values()):.1f}")


def _new_version(env) -> str:
    """A new registered version of the champion's artifacts (what promote registers for a new candidate)."""
    c, reg = env["client"], env["registry"]
    mv = c.create_model_version(reg.model_name, source=env["source"], run_id=env["run_id"],
                                tags={"llmops.test": "rollout challenger"})
    return str(mv.version)


def _start(env, strategy: str) -> tuple[str, dict]:
    from pipelines.rollout import lifecycle
    from pipelines.rollout.config import load_rollout_config

    version = _new_version(env)
    with in_workspace(env["ws"]):
        state = lifecycle.start(load_rollout_config(), env["registry"], strategy=strategy, challenger_version=version,
                                champion_version=env["champion"], chosen_by="test")
    _wait_loaded(env, version)
    return version, state.to_dict()


def _wait_loaded(env, version: str, timeout: float = 120) -> None:
    """The server polls the registry aliases (serve.reload_poll_s): wait until it serves the challenger."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{env['serve']}/health", timeout=10).json()
        if (health.get("rollout") or {}).get("live") and health["rollout"]["challenger_version"] == version:
            return
        time.sleep(1)
    raise AssertionError(f"the server did not load challenger version {version}: {health}")


def _state(env) -> dict:
    return json.loads(env["state"].read_text())


class Traffic:
    """The official openai client as users (sticky per `user`), and a scripted rater posting thumbs."""

    def __init__(self, env):
        self.base = env["serve"]
        self.model = env["registry"].model_name
        self.client = openai.OpenAI(base_url=f"{self.base}/v1", api_key="not-needed-on-loopback", max_retries=0,
                                    timeout=120)
        self.http = httpx.Client(base_url=self.base, timeout=30)
        self.n = 0
        self.failed: list[str] = []
        self.answers: list[dict] = []

    def ask(self, user: str) -> dict | None:
        self.n += 1
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model, messages=[{"role": "user", "content": f"Say hello to friend number {self.n}."}],
                max_tokens=4, temperature=0, user=user)
        except openai.OpenAIError as exc:
            self.failed.append(f"{user}: {exc}")
            return None
        reply = raw.parse()
        answer = {"user": user, "request_id": raw.headers["x-request-id"],
                  "version": raw.headers.get("x-llmops-model-version"), "text": reply.choices[0].message.content}
        self.answers.append(answer)
        return answer

    def burst(self, users: list[str]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return [a for a in pool.map(self.ask, users) if a]

    def rate(self, answers: list[dict], like) -> None:
        for a in answers:
            resp = self.http.post("/v1/feedback", json={"request_id": a["request_id"], "rating": 1 if like(a) else -1})
            assert resp.status_code in (200, 201, 202), resp.text


def _run_until(env, traffic: Traffic, users: list[str], like, until, timeout: float) -> dict:
    """Users ask and the rater rates, a burst at a time, until the rollout state satisfies `until`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(env)
        if until(state):
            return state
        traffic.rate(traffic.burst(users), like)
        time.sleep(1.0)
    raise AssertionError(f"timed out; rollout state: {json.dumps(_state(env))[:3000]}")


def _asset_event(env, extra: dict) -> None:
    api = env["api"]
    assets = api.get("/assets", name_pattern="challenger_deployed")["assets"]
    asset = next(a for a in assets if a["name"] == "llmops/challenger_deployed")
    resp = api.http.post("/assets/events", json={"asset_id": asset["id"], "extra": extra})
    assert resp.status_code == 200, resp.text


def test_a_disliked_challenger_is_rolled_back_with_no_failed_request(rollout):
    started = time.monotonic()
    env, api = rollout, rollout["api"]
    version, state = _start(env, "canary")
    _asset_event(env, {"rollout_id": state["rollout_id"], "strategy": "canary", "version": version})
    triggered = api.wait("a run of llmops_rollout triggered by challenger_deployed", lambda: next(
        (r["dag_run_id"] for r in api.runs("llmops_rollout") if r["run_type"] == "asset_triggered"), None),
        timeout=90)
    mark(f"rollout {state['rollout_id']} of v{version} started; challenger_deployed -> {triggered}")
    # The first look has no traffic: it holds (insufficient data), it never decides.
    first = api.wait("the first look", lambda: next((h for h in _state(env)["history"] if h["event"] != "start"),
                                                     None), timeout=90)
    assert first["event"] == "hold" and "insufficient_data" in first["reason"], first
    mark("no traffic: hold (insufficient_data)")

    traffic = Traffic(env)
    users = [f"user-{i}" for i in range(12)]
    done = _run_until(env, traffic, users, like=lambda a: a["version"] != version,
                      until=lambda s: s["status"] != "running", timeout=240)
    assert done["status"] == "rolled_back", done["history"]
    last = done["history"][-1]
    assert last["by"] == "airflow" and "negative_feedback_rate" in last["reason"], last
    assert traffic.failed == [] and traffic.n >= 12  # 0 failed client requests
    served = {a["version"] for a in traffic.answers}
    assert served == {env["champion"], version}, served  # both arms were live
    from pipelines.models.registry import get_alias_version

    reg = env["registry"]
    assert str(get_alias_version(env["client"], reg.model_name, reg.alias).version) == env["champion"]
    assert get_alias_version(env["client"], reg.model_name, "challenger") is None
    # every user is back on the champion at once (the state is read per request)
    after = traffic.burst(users)
    assert {a["version"] for a in after} == {env["champion"]} and traffic.failed == []
    record = json.loads(Path(last["decision_record"]).read_text())
    assert record["decision"] == "rollback"
    nf = record["metrics"]["negative_feedback_rate"]
    guard = nf["roles"]["guardrail"]
    # worse by either test: the confidence sequence above the margin, or the exact test's e-value over its threshold
    assert guard["status"] == "worse", guard
    assert guard["diff_lo"] > guard["margin"] or guard["log_e"] >= guard["e_threshold"], guard
    mark(f"rolled back after {traffic.n} requests ({len(done['history']) - 1} looks), 0 failed; champion "
         f"v{env['champion']} untouched")
    TIMINGS["a_rollback"] = time.monotonic() - started


def test_a_challenger_as_good_advances_through_every_step_to_champion(rollout, tmp_path):
    started = time.monotonic()
    env, api = rollout, rollout["api"]
    version, state = _start(env, "canary")
    mark(f"rollout {state['rollout_id']} of v{version} started (steps {[s['share'] for s in STEPS]})")
    traffic = Traffic(env)
    users = [f"member-{i}" for i in range(12)]
    done = _run_until(env, traffic, users, like=lambda a: True, until=lambda s: s["status"] != "running",
                      timeout=300)
    assert done["status"] == "completed", done["history"]
    events = [h["event"] for h in done["history"]]
    assert events[0] == "start" and events[-1] == "complete" and "advance" in events, events
    shares = [h["share"] for h in done["history"] if h["event"] in ("advance", "complete")]
    assert shares == [0.5, 1.0], done["history"]  # each step left from its own share: every step was taken
    assert all(h["by"] == "airflow" for h in done["history"][1:])
    assert traffic.failed == []
    from pipelines.models.registry import get_alias_version

    reg = env["registry"]
    assert str(get_alias_version(env["client"], reg.model_name, reg.alias).version) == version
    # the server follows the champion alias: everyone gets the new version
    deadline = time.monotonic() + 60
    while {a["version"] for a in traffic.burst(users[:4])} != {version}:
        assert time.monotonic() < deadline, "the server kept serving the old champion"
        time.sleep(2)
    env["champion"] = version
    mark(f"v{version} advanced through {len(STEPS)} steps to champion after {traffic.n} requests")
    TIMINGS["b_advance"] = time.monotonic() - started
    _ui(env)


def _ui(env) -> None:
    """The LLMOps page in the Airflow UI draws the rollout: steps, share over time, per-arm intervals."""
    started = time.monotonic()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "Debian's chromium is installed by `make test` (see Makefile: browser)"
    from playwright.sync_api import sync_playwright

    api = env["api"]
    shots = env["home"] / "screenshots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.context.add_cookies([{"name": "_token", "value": api.token, "url": api.base}])
        page.goto(f"{api.base}/llmops/", wait_until="networkidle")
        assert page.locator("#rollout-status").inner_text() == "completed"
        assert page.locator("#rollout-steps tr").count() == len(STEPS) + 1
        assert page.locator("#share-chart polyline.share").count() == 1
        assert page.locator("#share-chart circle.look").count() >= 2
        assert page.locator("#metrics-chart g.metric-row").count() >= 3
        assert page.locator("#metrics-chart g.interval").count() >= 6
        page.locator("#rollout").screenshot(path=str(shots / "plugin_rollout.png"))
        browser.close()
    mark(f"UI: the rollout drawn on the LLMOps page ({shots / 'plugin_rollout.png'})")
    TIMINGS["ui"] = time.monotonic() - started


def test_a_shadow_rollout_returns_only_the_champions_answers(rollout):
    started = time.monotonic()
    env = rollout
    champion = env["champion"]
    version, state = _start(env, "shadow")
    traffic = Traffic(env)
    answers = traffic.burst([f"shadowed-{i}" for i in range(8)])
    assert traffic.failed == [] and len(answers) == 8
    assert {a["version"] for a in answers} == {champion}  # users only ever see the champion
    ids = {a["request_id"] for a in answers}

    def shadow_lines():
        lines = [json.loads(x) for x in env["log"].read_text().splitlines() if '"shadow"' in x]
        return [x for x in lines if x.get("arm") == "shadow" and x.get("shadow_of") in ids]

    deadline = time.monotonic() + 60
    while len(shadow_lines()) < len(ids):
        assert time.monotonic() < deadline, f"{len(shadow_lines())}/{len(ids)} shadow answers logged"
        time.sleep(1)
    lines = shadow_lines()
    assert {x["model_version"] for x in lines} == {version}
    assert {x["shadow_of"] for x in lines} == ids and not ids & {x["request_id"] for x in lines}
    # the analysis sees the shadow pairs (agreement with the champion) on its next look, and holds
    look = rollout["api"].wait("a look at the shadow rollout", lambda: next(
        (h for h in _state(env)["history"] if h["event"] == "hold"), None), timeout=90)
    record = json.loads(Path(look["decision_record"]).read_text())
    assert record["rollout"]["strategy"] == "shadow"
    from pipelines.rollout import lifecycle
    from pipelines.rollout.config import load_rollout_config

    with in_workspace(env["ws"]):
        lifecycle.abort(load_rollout_config(), env["registry"], by="test", reason="shadow scenario done")
    mark(f"shadow: {len(answers)} answers all from v{champion}; {len(lines)} shadow answers of v{version} logged")
    TIMINGS["c_shadow"] = time.monotonic() - started


def test_feedback_volume_fires_the_flywheel_on_the_live_scheduler(rollout):
    """Issue 31's volume trigger on the real triggerer and scheduler: once `flywheel.min_feedback_lines` ratings
    wait (the rollout tests' plus users rating now, through the API), the llmops_flywheel DAG's AssetWatcher fires
    and its harvest runs on them. These users have no API keys (loopback), so nobody consented to training use:
    every line is accounted for as excluded (no_key) and nothing reaches the landing inbox."""
    started = time.monotonic()
    env, api = rollout, rollout["api"]
    with in_workspace(env["ws"]):
        from pipelines.flywheel.config import load
        from pipelines.flywheel.harvest import pending_feedback

        cfg = load(env["ws"] / "params.yaml")[0]
        need = cfg.min_feedback_lines - pending_feedback(cfg)
    before = {r["dag_run_id"] for r in api.runs("llmops_flywheel")}
    if need > 0:  # below the volume: the watcher has not fired
        assert not [r for r in api.runs("llmops_flywheel") if r["run_type"] == "asset_triggered"]
    traffic = Traffic(env)
    while need > 0:
        answers = traffic.burst([f"rater-{i}" for i in range(min(need, 16))])
        traffic.rate(answers, like=lambda a: len(a["text"] or "") % 2 == 0)
        need -= len(answers)
    assert traffic.failed == []
    run_id = api.wait("a run of llmops_flywheel triggered by the feedback volume", lambda: next(
        (r["dag_run_id"] for r in api.runs("llmops_flywheel")
         if r["run_type"] == "asset_triggered" and r["dag_run_id"] not in before), None), timeout=120)
    try:
        assert api.finished("llmops_flywheel", run_id, timeout=180) == "success"
    finally:
        api.set_paused("llmops_flywheel", True)  # the rest of the session needs no harvests
    assert api.tasks("llmops_flywheel", run_id)["harvest"] == "success"
    report = json.loads((env["ws"] / cfg.report).read_text())
    assert report["lines"] >= cfg.min_feedback_lines and report["balanced"], report
    assert report["excluded"] == {"no_key": report["lines"]} and not report["written"], report
    assert not list((env["ws"] / "data" / "landing").glob("*/flywheel_*")), "a batch without consent landed"
    mark(f"flywheel: {report['lines']} ratings waiting fired the volume watcher -> {run_id}; all excluded "
         f"(no key, no consent), nothing landed")
    TIMINGS["d_flywheel_volume"] = time.monotonic() - started
