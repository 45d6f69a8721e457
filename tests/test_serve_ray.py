"""`llmops serve --engine ray`: the same API as a Ray Serve deployment on the session's local Ray, driven with the
official `openai` client through Serve's proxy; load makes the autoscaler go 1 -> 2 replicas and back to 1."""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import httpx
import openai
import pytest

from test_gate import registry_cfg
from test_serve import _promote, serve_config

# short delays and windows so the scale-up and scale-down each take seconds (params.yaml has the production ones)
RAY = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
       "downscale_delay_s": 2, "look_back_period_s": 1, "metrics_interval_s": 0.5, "num_cpus": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_served(ray_local, base_model_dir, tmp_path_factory):
    from ray import serve

    from pipelines.models.lm import make_smoke_adapter
    from pipelines.serving import ray_app
    from pipelines.serving.auth import new_key

    adapter = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (adapter / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, adapter)
    tmp = tmp_path_factory.mktemp("serve_ray")
    registry = registry_cfg(tmp)
    cand = tmp / "cand"
    shutil.copytree(adapter, cand)
    assert _promote(tmp, registry, cand, base_model_dir)["version"] == 1
    secret, entry = new_key("ray-k1")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps({"keys": [entry]}))
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMOPS_API_KEYS_FILE", str(keys))  # forwarded to the replicas (a path, not the secret)
    port = _free_port()
    # naive batching: every request here is sampled (one at a time per replica) and a replica starts faster
    cfg = serve_config(port=port, reload_poll_s=0, max_new_tokens=8, request_log=str(tmp / "logs" / "requests.jsonl"),
                       batching={"mode": "naive"}, guard={"enabled": False}, ray=RAY)
    try:
        ray_app.start(cfg, registry, blocking_timeout_s=180)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0, timeout=120)
        yield {"client": client, "url": f"http://127.0.0.1:{port}", "log": tmp / "logs" / "requests.jsonl"}
    finally:
        serve.shutdown()
        mp.undo()


def _states() -> dict[str, int]:
    from ray import serve

    from pipelines.serving.ray_app import APP_NAME, DEPLOYMENT_NAME

    dep = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    return {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items() if v}


def _wait_replicas(want: int, timeout: float, timeline: list, t0: float) -> None:
    """Poll until `want` replicas are RUNNING; `timeline` gets (s since t0, running, all states) at each change."""
    from pipelines.serving.ray_app import replicas

    deadline = time.time() + timeout
    while True:
        n, states = replicas(), _states()
        if not timeline or timeline[-1][1:] != (n, states):
            timeline.append((round(time.time() - t0, 1), n, states))
        if n == want:
            return
        assert time.time() < deadline, f"replicas did not reach {want} in {timeout:.0f} s: {timeline}"
        time.sleep(0.25)


def test_ray_serve_answers_and_autoscales_1_2_1(ray_served):
    from pipelines.serving.ray_app import app_status, replicas

    client = ray_served["client"]
    assert app_status() == "RUNNING" and replicas() == 1
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=6,
        temperature=0)
    assert raw.headers["x-llmops-model-version"] == "1" and raw.parse().choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hi"}],
                                                 max_tokens=6, temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")  # SSE streams through Serve's proxy
    with pytest.raises(openai.AuthenticationError):  # the replica read the key file from its environment
        client.with_options(api_key="wrong").models.list()
    assert httpx.get(ray_served["url"] + "/health").json()["version"] == "1"

    stop, results = threading.Event(), []

    def load(i):
        while not stop.is_set():
            try:
                r = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"Write a long story about the number {i}."}],
                    max_tokens=16, temperature=0.7, seed=i)  # sampled: one at a time per replica, no cache
                results.append(r.usage.completion_tokens)
            except Exception as exc:  # noqa: BLE001 - counted as a failure
                results.append(exc)

    timeline: list = []
    t0 = time.time()
    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        # 4 ongoing requests on one replica, target 1 per replica: upscale after 0.5 s, then the new replica loads
        # the model (about 15 s on a quiet 2-core box, up to a minute when the box is busy)
        _wait_replicas(2, 180, timeline, t0)
        n = len(results)
        deadline = time.time() + 60
        while len(results) < n + 2 and time.time() < deadline:  # both replicas serve
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    failures = [r for r in results if not isinstance(r, int)]
    assert not failures, failures[:3]
    _wait_replicas(1, 60, timeline, t0)  # idle: back to min_replicas after downscale_delay_s
    running = [n for _, n, _ in timeline]
    assert running[-1] == 1 and 2 in running and running.index(2) < len(running) - 1
    print("replica timeline (s, running, states):", timeline)


def test_build_app_is_the_application_builder_the_rayservice_imports():
    """The KubeRay RayService's `import_path` (infra/k8s/ray/rayservice-serving.yaml) resolved as Serve does."""
    import yaml
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from pipelines.config import load_params, project_root
    from pipelines.serving import ray_app

    manifest = yaml.safe_load((project_root() / "infra/k8s/ray/rayservice-serving.yaml").read_text())
    app_spec = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
    module, _, attr = app_spec["import_path"].partition(":")
    assert module == ray_app.__name__ and attr == "build_app"
    app = call_user_app_builder_with_args_if_necessary(getattr(ray_app, attr), {})
    dep = app._bound_deployment
    auto, want = dep._deployment_config.autoscaling_config, load_params()["serve"]["ray"]
    assert dep.name == app_spec["deployments"][0]["name"] == ray_app.DEPLOYMENT_NAME
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests, auto.upscale_delay_s,
            auto.downscale_delay_s, auto.look_back_period_s) == (
        want["min_replicas"], want["max_replicas"], want["target_ongoing_requests"], want["upscale_delay_s"],
        want["downscale_delay_s"], want["look_back_period_s"])
