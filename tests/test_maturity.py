"""`llmops maturity`: scored from evidence, so breaking a criterion lowers the score (and the level)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipelines.maturity.scorecard import scorecard, table, write_html

REPO = Path(__file__).resolve().parents[1]


def _by_name(card: dict) -> dict:
    return {c["name"]: c for c in card["criteria"]}


def test_switching_monitoring_off_drops_the_score_and_the_level(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    drift = tmp_path / "drift.json"  # a recorded drift run (the stage's metrics), so monitoring can pass
    drift.write_text(json.dumps({"status": "ok", "drifted": False, "result": {
        "n_current": 160, "n_reference": 673, "tests": {"oov": {"p_value": 0.31}, "length": {"p_value": 0.42}}}}))
    params["drift"]["metrics"] = str(drift)
    before = scorecard(REPO, params)
    assert _by_name(before)["basic monitoring"]["status"] == "pass"
    assert "160 texts vs 673, 2 tests, min p 0.31" in _by_name(before)["basic monitoring"]["figure"]

    off = copy.deepcopy(params)
    off["serve"]["request_log"] = None  # no request log: nothing for monitoring or online evaluation to read
    after = scorecard(REPO, off)
    monitoring = _by_name(after)["basic monitoring"]
    assert monitoring["status"] == "partial"
    assert "request log (serve.request_log): off" in monitoring["evidence"]
    assert after["score"] < before["score"]
    assert after["level"] == 0  # Level 1 needs all three of its criteria
    # the same switch also takes the A/B feedback loop's request log away
    assert _by_name(after)["A/B tests and feedback"]["points"] <= _by_name(before)["A/B tests and feedback"]["points"]

    fixed = copy.deepcopy(params)
    fixed["serve"]["ray"]["max_replicas"] = fixed["serve"]["ray"]["min_replicas"]  # no room to scale
    assert _by_name(scorecard(REPO, fixed))["auto-scaling"]["status"] != "pass"


def test_table_html_and_cli(tmp_path):
    card = scorecard(REPO)
    assert len(card["criteria"]) == 16 and {c["group"] for c in card["criteria"]} >= {"Level 1", "Level 2",
                                                                                       "Challenge 10"}
    text = table(card)
    assert "CI/CD integration" in text and f"maturity level {card['level']}" in text
    html = write_html(card, tmp_path / "maturity.html").read_text()
    assert f"Level {card['level']}" in html and html.count("<tr>") == 17

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["maturity", "--root", str(REPO), "--html", str(tmp_path / "m.html"),
                                      "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "maturity level" in result.output and (tmp_path / "m.html").exists() and (tmp_path / "m.json").exists()


def _unrecorded(params: dict, tmp_path) -> dict:
    """params whose every recorded run (stage metrics, gate decision, registry, rollout records) is elsewhere."""
    out = copy.deepcopy(params)
    for name, section in out.items():
        if isinstance(section, dict):
            for key in ("metrics", "decision"):
                if isinstance(section.get(key), str):
                    section[key] = str(tmp_path / "none" / f"{name}.{key}.json")
    out["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'none' / 'mlruns.db'}"
    out["rollout"]["decisions_dir"] = str(tmp_path / "none" / "rollout")
    return out


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" timestamp="2026-12-07T12:00:00">
<testcase classname="tests.test_serve" name="test_chat_completion_with_the_openai_client"/>
<testcase classname="tests.test_serve" name="test_wrong_or_missing_key_is_401">{fail}</testcase>
<testcase classname="tests.test_spark_cluster" name="test_standalone_cluster"/>
<testcase classname="tests.test_ray_cluster" name="test_two_nodes"/>
<testcase classname="tests.test_serve_ray" name="test_ray_serve_answers_and_autoscales_1_2_1"/>
<testcase classname="tests.test_io" name="test_skipped"><skipped/></testcase>
</testsuite></testsuites>"""


def test_a_pass_rests_on_a_recorded_run_never_on_code_or_config(tmp_path):
    """Issue 34: with no recorded run anywhere, code and config alone pass nothing (the one pass left reads the
    committed serving benchmark's measured latency), and every criterion prints what it read. A recorded test run
    where the named tests passed makes their criteria pass; the same run with one of them failed does not."""
    params = _unrecorded(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    bare = scorecard(REPO, params, test_report=tmp_path / "none" / "tests.xml")
    passing = {c["name"] for c in bare["criteria"] if c["status"] == "pass"}
    assert passing <= {"latency"}, passing
    if passing:
        assert "p50" in _by_name(bare)["latency"]["figure"] and "bench/results/serve.json" in _by_name(bare)[
            "latency"]["figure"]
    mine = [c for c in bare["criteria"] if c["name"] not in ("real-time evaluation", "A/B tests and feedback")]
    assert all(c["figure"] for c in mine), [c["name"] for c in mine if not c["figure"]]
    assert "no recorded run" in _by_name(bare)["secure API and compatibility"]["figure"]
    assert _by_name(bare)["secure API and compatibility"]["status"] == "partial"  # auth code and tests exist

    report = tmp_path / "tests.xml"
    report.write_text(JUNIT.format(fail=""))
    decision = tmp_path / "gate.json"
    decision.write_text(json.dumps({"decision": "promote"}))
    params["gate"]["decision"] = str(decision)
    card = _by_name(scorecard(REPO, params, test_report=report))
    assert card["secure API and compatibility"]["status"] == "pass"
    assert "OpenAI-client tests: 1/1 passed, API-key tests: 1/1 passed" in card["secure API and compatibility"]["figure"]
    assert card["scalability"]["status"] == "pass" and card["auto-scaling"]["status"] == "pass"
    assert card["CI/CD integration"]["status"] == "pass"
    assert "tests 5 passed, 0 failed" in card["CI/CD integration"]["figure"] and "gate: promote" in card[
        "CI/CD integration"]["figure"]

    report.write_text(JUNIT.format(fail="<failure message='401 expected'/>"))
    card = _by_name(scorecard(REPO, params, test_report=report))
    assert card["secure API and compatibility"]["status"] == "partial"
    assert "API-key tests: 0/1 passed" in card["secure API and compatibility"]["figure"]
    assert card["CI/CD integration"]["status"] == "partial"  # a failed test in the recorded run
