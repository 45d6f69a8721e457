"""Rollout state (pipelines/rollout/state.py): atomic saves, cheap cached loads that see every change, sticky and
proportional assignment, transitions, and an s3:// state on a real S3 server (moto_server)."""
from __future__ import annotations

import json
import os
import threading

import pytest

from pipelines.config import load_params
from pipelines.rollout.config import load_rollout_config
from pipelines.rollout.state import (RolloutState, RolloutStateError, RolloutStore, Step, assign_challenger,
                                     new_rollout)

STEPS = [Step(0.05, 0, 10, 0), Step(0.25, 0, 10, 0), Step(1.0, 0, 10, 0)]


def _state(**kw) -> RolloutState:
    return new_rollout(kw.pop("strategy", "canary"), 3, 4, kw.pop("steps", STEPS), chosen_by="test", **kw)


def test_shipped_params_parse(repo_root):
    cfg = load_rollout_config(load_params(repo_root / "params.yaml"))
    assert cfg.state_path.endswith("rollout.json")
    assert [s.share for s in cfg.steps_for("canary")] == [0.05, 0.25, 0.5, 1.0]
    assert [s.share for s in cfg.steps_for("shadow")] == [0.0]


def test_unknown_metric_and_unsorted_steps_are_refused(repo_root):
    from pipelines.config import ConfigError

    params = load_params(repo_root / "params.yaml")
    bad = json.loads(json.dumps(params["rollout"]))
    bad["analysis"]["guardrails"]["eror_rate"] = 0.0
    with pytest.raises(ConfigError, match="eror_rate"):
        load_rollout_config({"rollout": bad})
    bad = json.loads(json.dumps(params["rollout"]))
    bad["steps"] = list(reversed(bad["steps"]))
    with pytest.raises(ConfigError, match="increase"):
        load_rollout_config({"rollout": bad})


def test_no_state_file_means_no_rollout(tmp_path):
    assert RolloutStore(tmp_path / "none.json").load() is None


def test_save_is_atomic_and_load_sees_each_change(tmp_path):
    path = tmp_path / "state" / "rollout.json"
    writer, reader = RolloutStore(path), RolloutStore(path)
    state = _state()
    writer.save(state)
    first = reader.load()
    assert first == state and first.challenger_share() == 0.05 and not first.shadowing()
    assert reader.load() is first  # unchanged file: the cached object, no re-read
    # no temp files are left next to the state
    assert sorted(p.name for p in path.parent.iterdir()) == ["rollout.json"]

    # many quick saves while another thread loads: every load is a whole, valid state
    seen, errors = set(), []

    def read():
        for _ in range(300):
            try:
                s = reader.load()
                seen.add(s.step_index)
            except Exception as exc:  # a torn read would raise here
                errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    cur = state
    for _ in range(100):
        cur = cur.advanced("test") if not cur.last_step else _state(rollout_id=state.rollout_id)
        writer.save(cur)
    t.join()
    assert errors == []
    # a save within the same mtime tick is still seen (rename gives the file a new inode)
    final = cur.advanced("test") if not cur.last_step else cur.held("test", "look")
    writer.save(final)
    assert reader.load() == final


def test_a_restarted_reader_resumes_the_same_step_and_assignments(tmp_path):
    path = tmp_path / "rollout.json"
    state = _state().advanced("test", "ok")
    RolloutStore(path).save(state)
    before = [assign_challenger(f"key-{i}", state.rollout_id, state.challenger_share()) for i in range(500)]
    again = RolloutStore(path).load()  # a new process would build a new store
    assert again.step_index == 1 and again.challenger_share() == 0.25
    assert [assign_challenger(f"key-{i}", again.rollout_id, again.challenger_share()) for i in range(500)] == before


def test_assignment_is_deterministic_proportional_and_monotone():
    keys = [f"user-{i}" for i in range(20000)]
    for share in (0.05, 0.25, 0.5):
        got = sum(assign_challenger(k, "ro-1", share) for k in keys) / len(keys)
        assert abs(got - share) < 4 * (share * (1 - share) / len(keys)) ** 0.5
    small = {k for k in keys if assign_challenger(k, "ro-1", 0.05)}
    large = {k for k in keys if assign_challenger(k, "ro-1", 0.25)}
    assert small <= large  # a key on the challenger at 5% stays on it at 25%
    other = {k for k in keys if assign_challenger(k, "ro-2", 0.05)}
    assert len(small & other) < len(small) / 2  # a new rollout reshuffles
    assert not assign_challenger("k", "ro-1", 0.0) and assign_challenger("k", "ro-1", 1.0)


def test_transitions_and_history():
    s = _state()
    s1 = s.held("analysis", "insufficient_data")
    assert s1.step_index == 0 and s1.history[-1]["event"] == "hold"
    s2 = s1.advanced("analysis", "non-inferior").advanced("analysis")
    assert s2.challenger_share() == 1.0 and s2.last_step
    with pytest.raises(RolloutStateError, match="last step"):
        s2.advanced("analysis")
    done = s2.completed("analysis", "all steps passed")
    assert done.status == "completed" and done.challenger_share() == 0.0
    with pytest.raises(RolloutStateError, match="completed"):
        done.rolled_back("x", "y")
    rb = s.rolled_back("analysis", "error_rate worse")
    assert rb.status == "rolled_back" and rb.challenger_share() == 0.0
    assert [h["event"] for h in s2.history] == ["start", "hold", "advance", "advance"]
    shadow = _state(strategy="shadow", steps=[Step(0.0, 0, 10, 0)])
    assert shadow.shadowing() and shadow.challenger_share() == 0.0
    assert not shadow.aborted("cli", "stop").shadowing()


def test_a_file_that_is_not_a_state_is_an_error(tmp_path):
    path = tmp_path / "rollout.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(RolloutStateError):
        RolloutStore(path).load()
    path.write_text("not json")
    with pytest.raises(RolloutStateError):
        RolloutStore(path).load()


def test_state_in_s3(s3_bucket, s3_server, monkeypatch):
    bucket, client = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = f"s3://{bucket}/rollouts/state.json"
    reader = RolloutStore(uri, poll_s=0.0)
    assert reader.load() is None
    state = _state()
    RolloutStore(uri).save(state)
    assert reader.load() == state
    nxt = state.advanced("test")
    RolloutStore(uri).save(nxt)
    assert reader.load().step_index == 1
    body = client.get_object(Bucket=bucket, Key="rollouts/state.json")["Body"].read()
    assert json.loads(body)["rollout_id"] == state.rollout_id
    # within poll_s, the cached state is served without asking S3 again
    slow = RolloutStore(uri, poll_s=3600)
    assert slow.load().step_index == 1
    RolloutStore(uri).save(nxt.advanced("test"))
    assert slow.load().step_index == 1
    assert os.environ["AWS_ENDPOINT_URL_S3"]
