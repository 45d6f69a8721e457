"""The rollout's Airflow side without a scheduler: the llmops_rollout DAG and the lifecycle's strategy choice parse
with their switches on; one look at a time (what each DAG run calls, pipelines/orchestration/rollout_run.py) holds
without traffic, rolls a disliked challenger back, asks a person before 100% and acts on the answer; the strategy
choice is recorded with its cost estimate and promote's hand-over is read back; the status page draws the rollout.
The real scheduler runs all of it in tests/test_e2e_rollout.py."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from pipelines.rollout.state import iso, utc_now

HEAVY = ("torch", "pyspark", "ray", "great_expectations", "transformers", "dvc", "mlflow", "sentence_transformers")

PROBE = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter() - started
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "parse_s": parsed,
       "heavy": [m for m in sys.argv[2].split(",") if m in sys.modules]}
for d in ("llmops_rollout", "llmops_lifecycle"):
    dag = bag.dags[d]
    out[d] = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    out[d + "_types"] = {t.task_id: type(t).__name__ for t in dag.tasks}
tt = bag.dags["llmops_rollout"].timetable
out["clock"] = type(getattr(tt, "timetable", None) or getattr(tt, "_timetable", tt)).__name__
out["options"] = bag.dags["llmops_lifecycle"].get_task("approve_promotion").options
print(json.dumps(out))
"""


def test_dags_parse_with_final_approval_and_strategy_choice(repo_root, tmp_path):
    ws = tmp_path / "repo"
    for rel in ("dags", "plugins"):
        shutil.copytree(repo_root / rel, ws / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "dvc.yaml", ws / "dvc.yaml")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["rollout"].update(final_approval=True, choose_strategy=True, schedule=6)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               LLMOPS_ROOT=str(ws), PYTHONPATH=os.pathsep.join([str(ws / "plugins"), str(repo_root)]))
    out = subprocess.run([sys.executable, "-c", PROBE, str(ws / "dags"), ",".join(HEAVY)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["heavy"] == [] and result["parse_s"] < 10
    assert result["clock"] == "DeltaTriggerTimetable"  # rollout.schedule in seconds
    rollout = result["llmops_rollout"]
    assert rollout["route"] == ["analyze"]
    assert rollout["approve_full_traffic"] == ["route"] and result["llmops_rollout_types"][
        "approve_full_traffic"] == "HITLOperator"
    assert rollout["apply_answer"] == ["analyze", "approve_full_traffic"]
    assert rollout["apply_decision"] == ["analyze", "route"]
    life = result["llmops_lifecycle"]
    assert result["llmops_lifecycle_types"]["approve_promotion"] == "HITLBranchOperator"
    assert result["options"] == ["direct", "canary", "shadow", "Reject"]
    assert life["record_strategy"] == ["approve_promotion", "gate_summary"]
    assert "record_strategy" in life["promote"] and life["promotion_rejected"] == ["approve_promotion"]
    assert life["hand_over_to_rollout"] == ["promote"] and life["deploy"] == ["promote"]


# ------------------------------------------------------------------------------------------- one look at a time

def _workspace(tmp_path: Path, repo_root: Path, monkeypatch, **rollout) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params["registry"]["artifact_root"] = str(tmp_path / "artifacts")
    analysis = params["rollout"]["analysis"]
    analysis.update(min_requests=8, min_rated=8, min_scored=8,
                    success={"negative_feedback_rate": 0.6})  # loose: a handful of ratings decides
    params["rollout"].update(rollout)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("LLMOPS_ROOT", str(ws))
    return ws


def _registry(params: dict):
    from mlflow.tracking import MlflowClient

    from pipelines.models.registry import RegistryConfig

    reg = RegistryConfig(**params["registry"])
    uri = reg.tracking_uri
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.create_registered_model(reg.model_name)
    for _ in range(2):
        c.create_model_version(reg.model_name, source=str(Path(uri[len("sqlite:///"):]).parent))
    c.set_registered_model_alias(reg.model_name, reg.alias, "1")
    return reg, c


def _traffic(ws: Path, state, n: int, *, negative: dict[str, bool], start=None, spacing_ms: int = 100) -> None:
    """`n` requests per arm, each rated (thumbs), appended to the request and feedback logs."""
    start = start or utc_now() - timedelta(seconds=30)
    (ws / "logs").mkdir(exist_ok=True)
    with open(ws / "logs" / "requests.jsonl", "a") as rq, open(ws / "logs" / "feedback.jsonl", "a") as fb:
        for arm, version in (("champion", state.champion_version), ("challenger", state.challenger_version)):
            for i in range(n):
                ts = iso(start + timedelta(milliseconds=spacing_ms * i))
                rid = f"{state.rollout_id}-{arm}-{i}-{ts}"
                rq.write(json.dumps({
                    "ts": ts, "request_id": rid, "key_id": f"user-{i}", "model_version": version, "alias": arm,
                    "mode": "chat", "status": 200, "prompt": "hi", "response": "the capital of France is Paris",
                    "prompt_tokens": 5, "completion_tokens": 8, "latency_ms": 100.0 + i, "ttft_ms": 20.0,
                    "cpu_s": 0.1, "cost_usd": 1e-6, "pii_found": {"prompt": {}, "response": {}}, "guard": None,
                    "contexts": None, "arm": arm, "rollout_id": state.rollout_id, "replica": "h:1",
                    "shadow_of": None}) + "\n")
                neg = negative[arm]
                fb.write(json.dumps({
                    "ts": ts, "feedback_id": hashlib.sha256(rid.encode()).hexdigest(), "request_id": rid,
                    "key_id": f"user-{i}", "model_version": version, "alias": arm, "arm": arm,
                    "rating": -1 if neg else 1, "scale": "thumbs", "negative": neg, "correction": None,
                    "correction_sha256": None, "tags": [], "pii_found": {"correction": {}}}) + "\n")


def test_one_look_per_run_holds_then_rolls_back_a_disliked_challenger(tmp_path, repo_root, monkeypatch):
    from pipelines.models.registry import get_alias_version
    from pipelines.orchestration import rollout_run
    from pipelines.orchestration.status import collect, render_status
    from pipelines.rollout import lifecycle
    from pipelines.rollout.config import load_rollout_config

    ws = _workspace(tmp_path, repo_root, monkeypatch)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    reg, c = _registry(params)
    cfg = load_rollout_config()
    state = lifecycle.start(cfg, reg, strategy="canary", challenger_version=2, champion_version=1,
                            chosen_by="hitl:admin", now=utc_now() - timedelta(minutes=2))

    look = rollout_run.analyze()  # no traffic yet: a hold, never a decision
    assert look["decision"] == "hold" and look["reasons"][0].startswith("insufficient_data"), look
    assert look["rollout_id"] == state.rollout_id and not look["approval_required"]
    applied = rollout_run.apply_recorded(look["record"])
    assert applied["action"] == "hold" and applied["status"] == "running" and applied["share"] == 0.05

    _traffic(ws, state, 12, negative={"champion": False, "challenger": True})
    look = rollout_run.analyze()
    assert look["decision"] == "rollback", look
    assert any("negative_feedback_rate" in r for r in look["reasons"])
    applied = rollout_run.apply_recorded(look["record"])
    assert applied["action"] == "rollback" and applied["status"] == "rolled_back"
    assert applied["challenger_alias_removed"] and get_alias_version(c, reg.model_name, "challenger") is None
    assert str(get_alias_version(c, reg.model_name, reg.alias).version) == "1"  # champion untouched
    # a second apply of the same record is stale, and the next run has nothing to look at
    assert rollout_run.apply_recorded(look["record"])["action"] == "noop"
    assert rollout_run.analyze()["decision"] == "noop"

    # The plugin page: steps, the share over time and the per-arm intervals as charts.
    html = render_status(collect(ws))
    assert 'id="rollout-status">rolled_back<' in html and state.rollout_id in html
    share = re.search(r'<polyline class="share" points="([^"]+)"', html).group(1).split()
    ys = [float(p.split(",")[1]) for p in share]
    assert min(ys) < max(ys) and ys[-1] == max(ys)  # up to 5% at the start, back to 0% after the rollback
    assert html.count('class="look"') == 2  # two looks: hold, rollback
    row = re.search(r'<g class="metric-row" data-metric="negative_feedback_rate">(.*?)</text>\n</g>', html, re.S)
    assert row and "guardrail: worse" in row.group(1)
    assert row.group(1).count('class="interval') == 2  # champion and challenger, each with its interval
    assert "hitl:admin" in html


def test_final_approval_shows_the_table_and_acts_on_the_answer(tmp_path, repo_root, monkeypatch):
    from pipelines.models.registry import get_alias_version
    from pipelines.orchestration import rollout_run
    from pipelines.rollout import lifecycle
    from pipelines.rollout.config import load_rollout_config

    ws = _workspace(tmp_path, repo_root, monkeypatch, final_approval=True, steps=[
        {"share": 0.5, "min_duration_s": 0, "min_requests": 4, "min_rated": 4},
        {"share": 1.0, "min_duration_s": 0, "min_requests": 4, "min_rated": 4}])
    params = yaml.safe_load((ws / "params.yaml").read_text())
    reg, c = _registry(params)
    cfg = load_rollout_config()
    state = lifecycle.start(cfg, reg, strategy="canary", challenger_version=2, champion_version=1,
                            chosen_by="test", now=utc_now() - timedelta(minutes=2))
    _traffic(ws, state, 20, negative={"champion": False, "challenger": False})
    look = rollout_run.analyze()
    assert look["decision"] == "advance" and look["approval_required"], look
    body = look["body"]
    assert "| negative_feedback_rate (success) |" in body and "challenger - champion" in body
    assert re.search(r"\| 0\.000 \[0\.000, 0\.\d+\] \(n 20\)", body), body  # each arm with its interval
    # Reject: the step holds ("not approved"); nothing moves.
    held = rollout_run.apply_answer(look["record"], approved=False, by="hitl:admin")
    assert held["action"] == "hold" and held["share"] == 0.5
    # Approve: a fresh look, applied with the approval: the challenger takes 100%.
    look = rollout_run.analyze()
    done = rollout_run.apply_answer(look["record"], approved=True, by="hitl:admin")
    assert done["action"] == "advance" and done["share"] == 1.0 and done["fresh_decision"] == "advance"
    history = json.loads((ws / cfg.state_path).read_text())["history"]
    assert [h["event"] for h in history] == ["start", "hold", "advance"] and history[-1]["by"] == "hitl:admin"
    assert "not approved" in history[1]["reason"]
    # the last step completes with no further approval (it is already at 100%): the champion moves
    _traffic(ws, state, 20, negative={"champion": False, "challenger": False}, start=utc_now(), spacing_ms=1)
    time.sleep(0.05)  # the requests of the new step are in the past of the next look
    look = rollout_run.analyze()
    assert look["decision"] == "complete" and not look["approval_required"], look
    assert rollout_run.apply_recorded(look["record"])["status"] == "completed"
    assert str(get_alias_version(c, reg.model_name, reg.alias).version) == "2"


def test_strategy_choice_is_recorded_with_its_cost_estimate(tmp_path, repo_root, monkeypatch):
    from pipelines.orchestration import rollout_run
    from pipelines.rollout.choice import choice_for, cost_estimate
    from pipelines.rollout.config import load_rollout_config
    from pipelines.rollout.state import new_rollout, store_for

    ws = _workspace(tmp_path, repo_root, monkeypatch)
    cfg = load_rollout_config()
    (ws / "reports").mkdir()
    (ws / "reports" / "gate_decision.json").write_text(json.dumps({
        "decision": "promote", "champion": 1, "candidate_sha256": "ab" * 32, "failed": [],
        "reasons": [{"check": "floor", "metric": "perplexity", "observed": 4.1, "op": "<=", "threshold": 15,
                     "passed": True}]}))
    (ws / "metrics").mkdir()
    (ws / "metrics" / "evaluate.json").write_text(json.dumps({
        "base": {"latency": {"cost_per_1k_tokens": 0.0006}}, "candidate": {"latency": {"cost_per_1k_tokens": 0.0008}}}))
    state = new_rollout("canary", "1", "2", cfg.steps_for("canary"), "x", now=utc_now() - timedelta(hours=2))
    _traffic(ws, state, 60, negative={"champion": False, "challenger": False},
             start=utc_now() - timedelta(hours=1))  # 120 requests in the last 24 h, 13 tokens each

    est = cost_estimate(cfg)
    assert est["traffic"]["requests"] == 120 and est["traffic"]["tokens_per_h"] == pytest.approx(120 * 13 / 24)
    shadow = est["strategies"]["shadow"]
    # shadow: every request answered twice for max(min duration, min requests at the traffic rate)
    want_h = max(cfg.shadow.min_duration_s / 3600, cfg.shadow.min_requests / 5.0)
    assert shadow["duration_h"] == pytest.approx(want_h)
    assert shadow["extra_usd"] == pytest.approx(want_h * 65 * 0.0008 / 1000)
    assert est["strategies"]["canary"]["duration_h"] > cfg.steps[0].min_duration_s / 3600
    assert est["strategies"]["direct"]["extra_usd_per_h_after"] == pytest.approx(65 * 0.0002 / 1000)

    summary = rollout_run.strategy_choice()  # what the promotion approver reads
    assert "Gate decision: **promote**" in summary["body"] and "| **shadow** |" in summary["body"]
    assert "(params default)" in summary["body"] and summary["candidate_sha256"] == "ab" * 32
    path = rollout_run.record_strategy("canary", by="hitl:admin", candidate_sha256="ab" * 32,
                                       estimate=summary["estimate"])
    assert Path(path).exists()
    chosen = choice_for(cfg, "ab" * 32)
    assert chosen["strategy"] == "canary" and chosen["by"] == "hitl:admin"
    assert choice_for(cfg, "cd" * 32) is None  # a choice is for its own candidate only
    with pytest.raises(ValueError):
        rollout_run.record_strategy("yolo", by="x", candidate_sha256="ab" * 32)

    # promote's hand-over read back: a running rollout of the promoted version -> canary; otherwise direct
    (ws / "reports" / "promotion.json").write_text(json.dumps({"decision": "promote", "version": 2}))
    assert rollout_run.promoted_strategy()["strategy"] == "direct"
    store_for(ws / cfg.state_path).save(state)
    handed = rollout_run.promoted_strategy()
    assert handed["strategy"] == "canary" and handed["rollout_id"] == state.rollout_id
