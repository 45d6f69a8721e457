"""`llmops maturity` scores Level 2 "real-time evaluation" and challenge 8 (A/B tests and feedback) from the rollout
analysis' decision records only: config keys score nothing, a look that held is partial, a decision taken on live
traffic (with ratings, for challenge 8) passes, and the figure quotes it."""
from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from pathlib import Path

import yaml

from pipelines.maturity.scorecard import scorecard
from pipelines.rollout.state import new_rollout, store_for, utc_now
from test_rollout_airflow import _traffic

REPO = Path(__file__).resolve().parents[1]


def _criteria(params: dict) -> tuple[dict, dict]:
    card = {c["name"]: c for c in scorecard(REPO, params)["criteria"]}
    return card["real-time evaluation"], card["A/B tests and feedback"]


def test_rollout_decisions_not_config_keys_score_realtime_evaluation_and_ab_tests(tmp_path, monkeypatch):
    from pipelines.rollout import analysis
    from pipelines.rollout.config import load_rollout_config

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rollout"]["decisions_dir"] = str(tmp_path / "decisions")
    params["rollout"]["state_path"] = str(tmp_path / "state" / "rollout.json")
    # Every switch a config could flip: none of them is evidence.
    claimed = copy.deepcopy(params)
    claimed["serve"]["challenger"]["traffic_share"] = 0.5
    claimed["rollout"].update(strategy="canary", final_approval=True, choose_strategy=True)
    realtime, ab = _criteria(claimed)
    assert (realtime["status"], ab["status"]) == ("fail", "fail") and realtime["figure"] is None
    assert "0 looks at 0 rollout(s)" in realtime["evidence"][0]
    # A file that merely looks like a decision (no live traffic of both arms) does not count either.
    (tmp_path / "decisions" / "ro-fake").mkdir(parents=True)
    (tmp_path / "decisions" / "ro-fake" / "20261207T000000.json").write_text(json.dumps(
        {"decision": "complete", "arms": {"champion": {"requests": 0}, "challenger": {"requests": 0}}, "metrics": {}}))
    assert [c["status"] for c in _criteria(params)] == ["fail", "fail"]

    # The analysis on live traffic: a look that held is partial...
    ws = tmp_path / "ws"
    ws.mkdir()
    analysis_params = copy.deepcopy(params)
    analysis_params["rollout"]["analysis"].update(
        request_log=str(ws / "logs" / "requests.jsonl"), feedback_log=str(ws / "logs" / "feedback.jsonl"),
        min_requests=8, min_rated=8, min_scored=8, success={"negative_feedback_rate": 0.6})
    (ws / "params.yaml").write_text(yaml.safe_dump(analysis_params))
    monkeypatch.setenv("LLMOPS_ROOT", str(ws))
    cfg = load_rollout_config()
    state = new_rollout("canary", "3", "4", cfg.steps_for("canary"), "test", now=utc_now() - timedelta(minutes=5))
    store_for(cfg.state_path).save(state)
    _traffic(ws, state, 3, negative={"champion": False, "challenger": False})
    assert analysis.run(cfg)["decision"] == "hold"
    realtime, ab = _criteria(params)
    assert (realtime["status"], ab["status"]) == ("partial", "partial"), (realtime, ab)
    assert "latest look (no decision yet): hold of v4 vs v3" in realtime["evidence"][-1]

    # ... and a rollback decided on the users' ratings passes both, with its figures.
    _traffic(ws, state, 12, negative={"champion": False, "challenger": True})
    assert analysis.run(cfg)["decision"] == "rollback"
    realtime, ab = _criteria(params)
    assert (realtime["status"], ab["status"]) == ("pass", "pass"), (realtime, ab)
    assert realtime["figure"].startswith("rollback v4 vs v3: negative_feedback_rate 0.8 [")
    # the challenger's rate and interval first (12 of 15 disliked), then the champion's; 3 + 12 ratings per arm
    assert re.fullmatch(r"rollback v4 vs v3: negative_feedback_rate 0\.8 \[0\.\d+, 0\.\d+\] \(n 15\) vs "
                        r"0 \[0, 0\.\d+\] \(n 15\)", ab["figure"]), ab["figure"]
    assert "rollback of v4 vs v3 (canary, step 1/4, 20" in realtime["evidence"][1]
