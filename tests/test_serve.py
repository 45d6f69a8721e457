"""The chat API against a champion promoted into a tmp registry, with real generation."""
from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from pipelines.stages.registry import shared_config
from test_gate import gate_cfg, promote_cfg, registry_cfg, write_metrics


def _promote(tmp_path, registry, cand, base_model_dir):
    from pipelines.models.lm import dir_sha256
    from pipelines.stages import gate, promote

    write_metrics(tmp_path, dir_sha256(cand), 4.0, 0.2, 0.3, cand)
    gate.run(gate_cfg(tmp_path), registry)
    return promote.run(promote_cfg(tmp_path, cand, base_model_dir), registry)


def serve_config(**overrides):
    from pipelines.config import config_from_params
    from pipelines.serving.api import ServeConfig

    return config_from_params("serve", ServeConfig, overrides)


@pytest.fixture(scope="module")
def served(base_model_dir, tmp_path_factory):
    from pipelines.models.lm import make_smoke_adapter
    from pipelines.serving.api import create_app

    adapter = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (adapter / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, adapter)
    tmp = tmp_path_factory.mktemp("serve")
    registry = registry_cfg(tmp)
    cand = tmp / "cand"
    shutil.copytree(adapter, cand)
    assert _promote(tmp, registry, cand, base_model_dir)["version"] == 1
    app = create_app(serve_config(max_new_tokens=12), registry)
    with TestClient(app) as client:
        yield client, tmp, registry, adapter


def test_health_reports_the_champion(served):
    client, *_ = served
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "m" and body["version"] == "1" and body["alias"] == "champion"


def test_chat_completion_generates(served):
    client, *_ = served
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert 0 < u["completion_tokens"] <= 8 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


@pytest.mark.parametrize("payload,status", [
    ({"messages": []}, 422),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 422),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 422),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400),
])
def test_bad_requests(served, payload, status):
    client, *_ = served
    assert client.post("/v1/chat/completions", json=payload).status_code == status


def test_reload_picks_up_a_moved_alias(served, base_model_dir):
    client, tmp, registry, adapter = served
    assert client.post("/admin/reload").json()["reloaded"] is False  # alias has not moved
    cand2 = tmp / "cand2"
    shutil.copytree(adapter, cand2)
    (cand2 / "training_meta.json").write_text('{"second": true}')
    assert _promote(tmp, registry, cand2, base_model_dir)["version"] == 2
    r = client.post("/admin/reload").json()
    assert r == {"reloaded": True, "version": "2", "previous_version": "1"}
    assert client.get("/health").json()["version"] == "2"


def test_no_champion_gives_503(tmp_path):
    from pipelines.serving.api import create_app

    app = create_app(serve_config(), shared_config("registry", tracking_uri=f"sqlite:///{tmp_path}/empty.db",
                                                   model_name="nobody"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503
