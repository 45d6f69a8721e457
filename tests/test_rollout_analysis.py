"""Rollout analysis and lifecycle (pipelines/rollout/): logs of two replicas counted together, decisions on
simulated traffic (a failing challenger rolls back, a good one advances, no traffic holds), hour partitions in S3
(moto_server) read only for the window, and the registry aliases moved by a real MLflow registry."""
from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipelines.config import config_from_params, load_params
from pipelines.monitoring.online_eval import OnlineEvalConfig
from pipelines.rollout import analysis, lifecycle
from pipelines.rollout.config import RolloutConfig, load_rollout_config
from pipelines.rollout.logs import partition_key
from pipelines.rollout.state import RolloutStore, Step, iso, new_rollout

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


def _cfg(tmp_path: Path, repo_root: Path, **analysis_overrides) -> RolloutConfig:
    params = load_params(repo_root / "params.yaml")
    over = {"state_path": str(tmp_path / "rollout.json"), "decisions_dir": str(tmp_path / "decisions"),
            "analysis": {"request_log": str(tmp_path / "requests"), "feedback_log": str(tmp_path / "feedback"),
                         **analysis_overrides}}
    return config_from_params("rollout", RolloutConfig, over, params)


def _online_eval(repo_root: Path) -> OnlineEvalConfig:
    return config_from_params("online_eval", OnlineEvalConfig, {}, load_params(repo_root / "params.yaml"))


def _traffic(state, n: int, *, err=(0.0, 0.0), neg=(0.1, 0.1), rate_share=0.5, seed=0, start=T0,
             spacing_s=1.0, shadow=False):
    """Request and feedback lines of `n` user requests spread over two replicas."""
    rng = random.Random(seed)
    reqs, fbs = [], []
    for i in range(n):
        ts = start + timedelta(seconds=i * spacing_s)
        replica = f"host-{i % 2}:{100 + i % 2}"
        key = f"user-{rng.randrange(10**6)}"
        if shadow:
            arm, idx = "champion", 0
        else:
            from pipelines.rollout.state import assign_challenger

            arm = "challenger" if assign_challenger(key, state.rollout_id, state.challenger_share()) else "champion"
            idx = 1 if arm == "challenger" else 0
        rid = f"req-{seed}-{i}"
        status = 500 if rng.random() < err[idx] else 200
        base = {"ts": iso(ts), "request_id": rid, "key_id": key, "model_version": "4" if idx else "3",
                "alias": arm, "mode": "chat", "status": status, "prompt": "hi", "response":
                "the answer is forty two" if status == 200 else None, "prompt_tokens": 5, "completion_tokens": 10,
                "latency_ms": 100 + rng.random() * 50, "ttft_ms": 20 + rng.random() * 5, "cpu_s": 0.1,
                "cost_usd": 1e-6, "pii_found": {"prompt": {}, "response": {}}, "guard": {"input": "allow",
                "output": "allow"}, "contexts": None, "arm": arm, "rollout_id": state.rollout_id,
                "replica": replica, "shadow_of": None}
        reqs.append(base)
        if shadow:
            reqs.append({**base, "request_id": rid + "-shadow", "arm": "shadow", "shadow_of": rid,
                         "model_version": "4", "status": 500 if rng.random() < err[1] else 200})
        if status == 200 and not shadow and rng.random() < rate_share:
            negative = rng.random() < neg[idx]
            fbs.append({"ts": iso(ts + timedelta(milliseconds=500)),
                        "feedback_id": hashlib.sha256(f"{key}{rid}".encode()).hexdigest(), "request_id": rid,
                        "key_id": key, "model_version": base["model_version"], "alias": arm, "arm": arm,
                        "rating": -1 if negative else 1, "scale": "thumbs", "negative": negative,
                        "correction": None, "correction_sha256": None, "tags": [], "pii_found": {"correction": {}}})
    return reqs, fbs


def _write_per_replica(folder: Path, lines: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    by: dict[str, list[str]] = {}
    for line in lines:
        by.setdefault(line.get("replica", "host-0:100").replace(":", "_"), []).append(json.dumps(line))
    for name, rows in by.items():
        (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")


def _start(cfg, strategy="canary", steps=None, now=T0):
    state = new_rollout(strategy, 3, 4, steps or cfg.steps_for(strategy), "test", now=now,
                        rollout_id=f"ro-test-{strategy}")  # fixed: the assignment (and so the data) is seeded
    RolloutStore(cfg.state_path).save(state)
    return state


def test_no_traffic_holds_with_insufficient_data(tmp_path, repo_root):
    cfg = _cfg(tmp_path, repo_root)
    _start(cfg)
    report = analysis.run(cfg, now=T0 + timedelta(hours=1), online_eval=_online_eval(repo_root))
    assert report["decision"] == "hold"
    assert report["reasons"][0].startswith("insufficient_data")
    assert Path(report["record"]).exists() and (tmp_path / "decisions" / "latest.json").exists()


def test_two_replicas_are_counted_and_a_good_challenger_advances(tmp_path, repo_root):
    steps = [Step(0.5, 0, 100, 20), Step(1.0, 0, 100, 20)]
    cfg = _cfg(tmp_path, repo_root)
    state = _start(cfg, steps=steps)
    reqs, fbs = _traffic(state, 4000, neg=(0.1, 0.1), rate_share=0.9, seed=1, spacing_s=0.5)
    _write_per_replica(tmp_path / "requests", reqs)
    _write_per_replica(tmp_path / "feedback", fbs)
    assert len(list((tmp_path / "requests").glob("*.jsonl"))) == 2
    now = T0 + timedelta(hours=1)
    report = analysis.run(cfg, now=now, online_eval=_online_eval(repo_root))
    arms = report["arms"]
    assert arms["champion"]["requests"] + arms["challenger"]["requests"] == 4000  # both replicas' lines
    assert len(report["inputs"]["request_log"]["files"]) == 2
    assert report["decision"] == "advance", report["reasons"]
    nf = report["metrics"]["negative_feedback_rate"]
    assert nf["roles"]["success"]["status"] == "non_inferior"
    assert nf["challenger"]["lo"] <= nf["challenger"]["value"] <= nf["challenger"]["hi"]
    # the decision applies: next step, recorded in the state's history
    applied = lifecycle.apply(cfg, None, report, by="test", now=now)
    assert applied["action"] == "advance" and applied["state"]["step_index"] == 1
    assert RolloutStore(cfg.state_path).load().history[-1]["decision_record"] == report["record"]
    # a second apply of the same (now stale) report does nothing
    assert lifecycle.apply(cfg, None, report, by="test", now=now)["action"] == "stale"


def test_failing_challenger_rolls_back(tmp_path, repo_root):
    cfg = _cfg(tmp_path, repo_root)
    state = _start(cfg, steps=[Step(0.25, 3600, 10**6, 10**6), Step(1.0, 0, 1, 1)])
    reqs, fbs = _traffic(state, 1200, err=(0.0, 0.2), seed=2)
    _write_per_replica(tmp_path / "requests", reqs)
    _write_per_replica(tmp_path / "feedback", fbs)
    report = analysis.run(cfg, now=T0 + timedelta(hours=1), online_eval=_online_eval(repo_root))
    assert report["decision"] == "rollback"
    assert any(r.startswith("error_rate") for r in report["reasons"])
    assert report["metrics"]["error_rate"]["roles"]["guardrail"]["status"] == "worse"


def test_a_worse_guardrail_names_the_test_that_found_it():
    """Few events: the normal-mixture sequence is still wide while the exact test already rejects; the reason must
    say which, never claim an interval above the margin that the record contradicts."""
    by_cs = analysis._worse_reason("error_rate", {"diff_lo": 0.08, "diff_hi": 0.3, "margin": 0.02})
    assert "surely above the guardrail margin 0.02" in by_cs
    by_e = analysis._worse_reason("negative_feedback_rate", {"diff_lo": -0.19, "diff_hi": 0.9, "margin": 0.0,
                                                              "log_e": 3.9, "e_threshold": 3.69})
    assert "surely above" not in by_e and "log e 3.9 >= 3.69" in by_e


def test_shadow_reports_agreement_and_skips_feedback(tmp_path, repo_root):
    cfg = _cfg(tmp_path, repo_root, min_shadow_agreement=0.8)
    state = _start(cfg, strategy="shadow", steps=[Step(0.0, 0, 50, 0)])
    reqs, _ = _traffic(state, 400, seed=3, shadow=True)
    _write_per_replica(tmp_path / "requests", reqs)
    report = analysis.run(cfg, now=T0 + timedelta(hours=1), online_eval=_online_eval(repo_root))
    assert "negative_feedback_rate" not in report["metrics"]
    assert report["agreement"]["pairs"] == 400 and report["agreement"]["value"] == 1.0
    assert report["agreement"]["status"] == "non_inferior"
    assert report["decision"] == "complete", report["reasons"]


def test_hour_partitions_in_s3_only_the_window_is_read(tmp_path, repo_root, s3_bucket, s3_server, monkeypatch):
    bucket, client = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    prefix = f"s3://{bucket}/logs/requests"
    cfg = _cfg(tmp_path, repo_root, request_log=prefix, feedback_log=f"s3://{bucket}/logs/feedback")
    state = _start(cfg, now=T0)
    reqs, fbs = _traffic(state, 600, seed=4, spacing_s=12)  # two hours of traffic
    for lines, root in ((reqs, "logs/requests"), (fbs, "logs/feedback")):
        parts: dict[str, list[str]] = {}
        for line in lines:
            key = partition_key(root, datetime.fromisoformat(line["ts"].replace("Z", "+00:00")),
                                line.get("replica", "host-0:100"))
            parts.setdefault(key, []).append(json.dumps(line))
        for key, rows in parts.items():
            client.put_object(Bucket=bucket, Key=key, Body=("\n".join(rows) + "\n").encode())
    # an old partition, before the rollout started, is never listed (it would not even parse)
    client.put_object(Bucket=bucket, Key="logs/requests/dt=2026-12-06/hour=23/old.jsonl", Body=b"not json\n")
    report = analysis.run(cfg, now=T0 + timedelta(hours=3), online_eval=_online_eval(repo_root))
    files = report["inputs"]["request_log"]["files"]
    assert files and all("dt=2026-12-07/hour=09" in f or "dt=2026-12-07/hour=10" in f for f in files)
    assert len(files) == 4  # 2 hours x 2 replicas
    assert report["inputs"]["request_log"]["rejected"] == 0
    assert report["arms"]["champion"]["requests"] + report["arms"]["challenger"]["requests"] == 600
    assert report["arms"]["challenger"]["rated"] > 0


@pytest.fixture(scope="module")
def registry_factory(tmp_path_factory):
    """One MLflow sqlite store for the module (creating its tables is the slow part); each call registers a fresh
    model with two versions, champion on version 1, and returns (RegistryConfig, client)."""
    import uuid

    from mlflow.tracking import MlflowClient

    from pipelines.models.registry import RegistryConfig

    root = tmp_path_factory.mktemp("rollout_registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def make():
        name = f"m-{uuid.uuid4().hex[:8]}"
        reg = RegistryConfig(tracking_uri=uri, experiment_name="t", artifact_root=str(root / "art"),
                             model_name=name, alias="champion")
        c.create_registered_model(name)
        for _ in range(2):
            c.create_model_version(name, source=str(root))
        c.set_registered_model_alias(name, "champion", "1")
        return reg, c

    return make


def test_lifecycle_moves_aliases(tmp_path, repo_root, registry_factory):
    from pipelines.models.registry import get_alias_version

    reg, c = registry_factory()
    m = reg.model_name
    cfg = _cfg(tmp_path, repo_root)
    state = lifecycle.start(cfg, reg, strategy="canary", challenger_version=2, champion_version=1, chosen_by="test")
    assert str(get_alias_version(c, m, "challenger").version) == "2"
    assert lifecycle.status(cfg)["share"] == 0.05
    for _ in range(len(state.steps) - 1):
        assert lifecycle.advance(cfg, reg, by="test")["action"] == "advance"
    done = lifecycle.advance(cfg, reg, by="test")
    assert done["action"] == "complete" and done["state"]["status"] == "completed"
    assert str(get_alias_version(c, m, "champion").version) == "2"
    assert get_alias_version(c, m, "challenger") is None
    assert c.get_model_version(m, "2").tags["previous_champion"] == "1"
    # a rollout that is aborted leaves the champion where it was
    lifecycle.start(cfg, reg, strategy="shadow", challenger_version=1, champion_version=2, chosen_by="test")
    assert lifecycle.status(cfg)["shadowing"]
    out = lifecycle.abort(cfg, reg, by="test", reason="changed my mind")
    assert out["state"]["status"] == "aborted" and out["challenger_alias_removed"]
    assert str(get_alias_version(c, m, "champion").version) == "2"
    assert get_alias_version(c, m, "challenger") is None


def test_cli_start_status_advance_abort(tmp_path, repo_root, registry_factory):
    import yaml
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.models.registry import get_alias_version

    reg, c = registry_factory()
    m = reg.model_name
    params = load_params(repo_root / "params.yaml")
    params["registry"].update(tracking_uri=reg.tracking_uri, model_name=m)
    params["rollout"].update(state_path=str(tmp_path / "rollout.json"), decisions_dir=str(tmp_path / "decisions"))
    params["rollout"]["analysis"].update(request_log=str(tmp_path / "requests"), feedback_log=str(tmp_path / "fb"))
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    run = CliRunner().invoke
    out = run(app, ["rollout", "status", "-p", str(pfile)])
    assert out.exit_code == 0 and "no rollout" in out.output
    out = run(app, ["rollout", "start", "2", "--strategy", "canary", "-p", str(pfile)])
    assert out.exit_code == 0, out.output
    assert "canary running, v2 vs champion v1, step 1/4" in out.output
    out = run(app, ["rollout", "analyze", "-p", str(pfile)])
    assert out.exit_code == 0 and "decision: hold" in out.output and "insufficient_data" in out.output
    out = run(app, ["rollout", "advance", "-p", str(pfile), "--by", "ops"])
    assert out.exit_code == 0 and "step 2/4" in out.output
    status = json.loads(run(app, ["rollout", "status", "--json", "-p", str(pfile)]).output)
    assert status["share"] == 0.25 and status["latest_decision"]["decision"] == "hold"
    assert status["state"]["history"][-1]["by"] == "ops"
    out = run(app, ["rollout", "abort", "--reason", "bad vibes", "-p", str(pfile)])
    assert out.exit_code == 0 and "aborted" in out.output
    assert get_alias_version(c, m, "challenger") is None
    assert str(get_alias_version(c, m, "champion").version) == "1"
    out = run(app, ["rollout", "abort", "--reason", "again", "-p", str(pfile)])
    assert out.exit_code == 2 and "no rollout running" in out.output
