"""promote into a tmp SQLite registry: alias moves, idempotent per adapter hash, a reject moves nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.io import read_json
from test_gate import gate_cfg, promote_cfg, registry_cfg, write_metrics


@pytest.fixture(scope="module")
def adapter(base_model_dir, tmp_path_factory):
    from pipelines.models.lm import make_smoke_adapter

    out = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (out / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, out)
    return out


def _candidate(adapter, tmp_path, name, salt):
    """A distinct candidate: the smoke adapter with different training metadata (so a different hash)."""
    d = tmp_path / name
    shutil.copytree(adapter, d)
    (d / "training_meta.json").write_text(f'{{"smoke": true, "salt": "{salt}"}}')
    return d


def _gate_and_promote(tmp_path, registry, cand, base_model_dir, ppl, rouge, asr):
    from pipelines.models.lm import dir_sha256
    from pipelines.stages import gate, promote

    write_metrics(tmp_path, dir_sha256(cand), ppl, rouge, asr, cand)
    gate.run(gate_cfg(tmp_path), registry)
    report = promote.run(promote_cfg(tmp_path, cand, base_model_dir), registry)
    return report, read_json(tmp_path / "promotion.json")


def test_promote_registers_moves_alias_and_is_idempotent(adapter, base_model_dir, tmp_path):
    from pipelines.models import registry

    cfg = registry_cfg(tmp_path)
    c1 = _candidate(adapter, tmp_path, "c1", "one")
    report, rec = _gate_and_promote(tmp_path, cfg, c1, base_model_dir, 4.0, 0.2, 0.3)
    assert report["action"] == "promoted" and rec["version"] == 1 and rec["previous_champion"] is None

    client = registry.client(cfg.tracking_uri)
    v1 = client.get_model_version_by_alias("m", "champion")
    assert str(v1.version) == "1"
    assert v1.tags[registry.HASH_TAG] == rec["adapter_sha256"] and v1.tags["gate_decision"] == "promote"
    # artifacts live under the configured artifact root, with the spec naming the base model
    local = Path(v1.source.removeprefix("file://"))
    assert str(local).startswith(str(tmp_path / "mlartifacts"))
    assert (local / "adapter_model.safetensors").exists()
    assert read_json(local / registry.SPEC_FILE)["base_model"] == str(base_model_dir)
    assert client.get_run(v1.run_id).data.metrics["perplexity"] == 4.0

    # same candidate again: no new version, alias unchanged
    report, rec = _gate_and_promote(tmp_path, cfg, c1, base_model_dir, 4.0, 0.2, 0.3)
    assert report["action"] == "already_champion" and rec["version"] == 1 and not rec["created_version"]
    assert len(client.search_model_versions("name='m'")) == 1

    # a better candidate: version 2 becomes champion, version 1 is kept
    c2 = _candidate(adapter, tmp_path, "c2", "two")
    report, rec = _gate_and_promote(tmp_path, cfg, c2, base_model_dir, 3.9, 0.21, 0.3)
    assert report["action"] == "promoted" and rec["version"] == 2 and rec["previous_champion"] == 1
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    assert str(client.get_model_version("m", "1").version) == "1"
    # rollback is moving the alias back
    assert registry.set_alias(cfg, 1) == {"model_name": "m", "alias": "champion", "version": 1, "previous_version": 2}
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    registry.set_alias(cfg, 2)

    # a rejected candidate: nothing registered, alias stays on 2, the rejection is recorded once
    c3 = _candidate(adapter, tmp_path, "c3", "three")
    report, rec = _gate_and_promote(tmp_path, cfg, c3, base_model_dir, 1e4, 0.0, 1.0)
    assert report["decision"] == "reject" and report["action"] == "recorded_rejection"
    assert rec["version"] is None and rec["champion"] == 2
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    assert len(client.search_model_versions("name='m'")) == 2
    _, again = _gate_and_promote(tmp_path, cfg, c3, base_model_dir, 1e4, 0.0, 1.0)
    assert again["already_recorded"] and again["run_id"] == rec["run_id"]


def test_stale_decision_is_refused(adapter, base_model_dir, tmp_path):
    from pipelines.models.lm import dir_sha256
    from pipelines.stages import gate, promote
    from pipelines.errors import StageFailed

    c1 = _candidate(adapter, tmp_path, "c1", "one")
    registry = registry_cfg(tmp_path)
    write_metrics(tmp_path, dir_sha256(c1), 4.0, 0.2, 0.3, c1)
    gate.run(gate_cfg(tmp_path), registry)
    (c1 / "training_meta.json").write_text('{"changed": true}')  # candidate replaced after the gate
    with pytest.raises(StageFailed, match="rerun evaluate"):
        promote.run(promote_cfg(tmp_path, c1, base_model_dir), registry)


def test_version_is_attached_to_the_finetune_run(adapter, base_model_dir, tmp_path):
    """training_meta.json names the finetune stage's MLflow run: the version links to it and carries its lineage."""
    import json

    from pipelines.models import registry

    cfg = registry_cfg(tmp_path)
    client = registry.client(cfg.tracking_uri)
    exp = client.create_experiment("ft", artifact_location=(tmp_path / "ftart").as_uri())
    ft = client.create_run(exp, tags={"dataset.version": "data/splits:abc.dir", "git_commit": "deadbeef"})
    cand = _candidate(adapter, tmp_path, "c1", "lineage")
    (cand / "training_meta.json").write_text(json.dumps({"mlflow_run_id": ft.info.run_id, "steps": 2}))
    report, rec = _gate_and_promote(tmp_path, cfg, cand, base_model_dir, 4.0, 0.2, 0.3)
    assert report["action"] == "promoted"
    v = client.get_model_version("m", str(rec["version"]))
    assert v.run_id == ft.info.run_id and v.tags["promote_run_id"] == rec["run_id"]
    assert v.tags["dataset.version"] == "data/splits:abc.dir" and v.tags["git_commit"] == "deadbeef"


def test_canary_promote_moves_only_the_challenger_and_a_finished_rollout_moves_the_champion(
        adapter, base_model_dir, tmp_path):
    """rollout.strategy canary: the first version still becomes champion (nothing to compare with); the next one
    gets the alias `challenger` and a running rollout; only completing it moves `champion`."""
    from pipelines.models import registry
    from pipelines.models.lm import dir_sha256
    from pipelines.rollout import lifecycle
    from pipelines.rollout.state import RolloutStore
    from pipelines.stages import gate, promote
    from pipelines.stages.registry import shared_config

    cfg = registry_cfg(tmp_path)
    rollout = shared_config("rollout", strategy="canary", state_path=str(tmp_path / "rollout.json"),
                            decisions_dir=str(tmp_path / "decisions"))
    client = registry.client(cfg.tracking_uri)
    for name, expect in (("c1", "promoted"), ("c2", "rollout_started")):
        cand = _candidate(adapter, tmp_path, name, name)
        write_metrics(tmp_path, dir_sha256(cand), 4.0, 0.2, 0.3, cand)
        gate.run(gate_cfg(tmp_path), cfg)
        report = promote.run(promote_cfg(tmp_path, cand, base_model_dir), cfg, rollout)
        rec = read_json(tmp_path / "promotion.json")
        assert report["action"] == expect, rec
    assert rec["strategy"] == "canary" and rec["strategy_chosen_by"] == "params" and rec["champion"] == 1
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "2"
    state = RolloutStore(tmp_path / "rollout.json").load()
    assert state.running and state.rollout_id == rec["rollout_id"] and state.challenger_share() == 0.05
    # promote again (a rerun): the same rollout keeps running
    again = promote.run(promote_cfg(tmp_path, cand, base_model_dir), cfg, rollout)
    assert again["action"] == "rollout_running"
    while RolloutStore(tmp_path / "rollout.json").load().running:
        lifecycle.advance(rollout, cfg, by="test")
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    assert registry.get_alias_version(client, "m", "challenger") is None
