"""The plugin's status page renders from what the stages and monitor runs write (no Airflow needed)."""
from __future__ import annotations

import json

import yaml

from pipelines.orchestration.status import collect, render_status


def test_status_page_renders_gate_drift_retrains_and_approvals(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    # a registry of its own (absent): the repository's mlruns.db holds the demo's champion after `make demo`
    params["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "gate_decision.json").write_text(json.dumps(
        {"decision": "promote", "champion": 1, "failed": [], "reasons": []}))
    run = tmp_path / "reports" / "monitor" / "asset_triggered__1"
    run.mkdir(parents=True)
    # The drift stage's report shape: the triggered tests sit in its summary.
    (run / "data_drift.json").write_text(json.dumps(
        {"drifted": True, "status": "ok", "summary": {"triggered": ["length", "topics"]}}))
    (run / "prompt_drift.json").write_text(json.dumps({"drifted": False, "status": "insufficient_data"}))
    (run / "online_eval.json").write_text(json.dumps({"status": "ok", "alerts": []}))
    (tmp_path / "data" / "landed").mkdir(parents=True)
    (tmp_path / "data" / "landed" / "approvals.json").write_text(json.dumps(
        {"t0_reviews": {"licence": "Apache-2.0", "approved_by": "admin", "approved_at": "2026-12-02T15:00:00Z"}}))
    state = collect(tmp_path)
    assert [w["name"] for w in state["monitor"]["windows"]] == ["data_drift", "prompt_drift"]
    html = render_status(state, [{"dag_id": "llmops_ingest", "run_id": "r", "task_id": "approve_new_sources",
                                  "subject": "Approve new data source(s): news"}])
    assert "length, topics" in html and 'id="gate"' in html and "promote" in html
    assert "Approve new data source(s): news" in html and "Apache-2.0" in html
    assert "no registered version yet" in html
