"""`llmops maturity`: scored from evidence, so breaking a criterion lowers the score (and the level)."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipelines.maturity.scorecard import scorecard, table, write_html

REPO = Path(__file__).resolve().parents[1]


def _by_name(card: dict) -> dict:
    return {c["name"]: c for c in card["criteria"]}


def test_switching_monitoring_off_drops_the_score_and_the_level(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    before = scorecard(REPO, params)
    assert _by_name(before)["basic monitoring"]["status"] == "pass"
    assert before["level"] >= 1

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
