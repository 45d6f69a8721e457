"""`make loop` (`llmops demo loop`): its step reporting, on a recorded event stream and on task-instance snapshots.

The real loop runs for minutes on real Airflow (measured in the issue's note); tests/test_e2e_loop.py drives the
same DAGs end to end. Here: the lines a user sees for each step of a recorded run, the tracker that turns Airflow's
task-instance snapshots into stage lines, and the refusal to start without a champion.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipelines.orchestration.demo_loop import STEPS, LoopOptions, TaskTracker, render, replay, run_loop

RECORDED = Path(__file__).parent / "data" / "demo_loop" / "events.jsonl"


def test_recorded_loop_prints_every_step_in_order():
    events = [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]
    lines = replay(RECORDED)
    numbered = [int(line.split("] ")[1].split(".")[0]) for line in lines
                if "] " in line and line.split("] ")[1][:1].isdigit() and line.split("] ")[1][1:3] == ". "]
    # every headline step shows up, numbered, in the order it happened
    assert sorted(set(numbered)) == sorted(STEPS.values()), numbered
    assert numbered == sorted(numbered), numbered
    text = "\n".join(lines)
    monitor = next(e for e in events if e["kind"] == "monitor")
    assert monitor["drifted"] and monitor["triggered"]
    for test_name in monitor["triggered"]:  # the drift line names the tests that fired, with their p-values
        assert f"{test_name} (p=" in text
    stages = [e["task"] for e in events if e["kind"] == "stage" and e["state"] == "success"]
    for stage in ("ingest", "dedup", "finetune", "evaluate", "gate", "promote", "deploy"):
        assert stage in stages, stages
        assert any(re.search(rf"\]\s+ok\s+{stage} [0-9.]+ s$", line) for line in lines), stage
    served = next(e for e in events if e["kind"] == "served")
    assert served["version"] != served["champion_before"]
    assert f"answers with version {served['version']}:" in text
    assert "Open these pages:" in text and "/required_actions" in text and "/llmops/" in text
    assert lines[-1].startswith("loop finished in") and "new champion serving" in lines[-1]


def test_rendering_of_the_steps_that_can_go_another_way():
    waiting = render({"kind": "approval_waiting", "t": 3.0, "dag": "llmops_ingest", "run_id": "r", "mode": "interactive",
                      "task": "approve_new_sources", "subject": "Approve new data source(s): t0_reviews",
                      "url": "http://127.0.0.1:8080/dags/llmops_ingest/runs/r/tasks/approve_new_sources/required_actions",
                      "password_file": "/x/simple_auth_manager_passwords.json.generated"})
    assert "waiting for you in Airflow" in waiting[0] and waiting[1].strip().startswith("open http://127.0.0.1:8080/")
    assert render({"kind": "approval", "t": 1, "needed": False, "sources": ["t0_reviews"]})[0].endswith(
        "approval: not needed (t0_reviews approved before)")
    assert "no drift" in render({"kind": "monitor", "t": 1, "run_id": "m", "drifted": False, "status": "ok",
                                 "triggered": [], "p_values": {}, "threshold": None, "report": None})[0]
    refused = render({"kind": "policy", "t": 1, "allowed": False, "reason": None})[0]
    assert "REFUSED" in refused and "every stage skipped" in refused
    gate = render({"kind": "gate", "t": 1, "decision": "reject", "checks": 5, "passed": 4, "champion": 1,
                   "failed": ["versus_champion perplexity: observed 40 vs 35"]})
    assert "6. gate: REJECT (4/5 checks passed" in gate[0] and gate[1].strip().startswith("FAIL versus_champion")
    assert "not promoted: the champion stays version 1" in render({"kind": "promoted", "t": 1, "promoted": False,
                                                                   "version": 1, "previous": 1})[0]


def _ti(task_id, state, start=None, end=None, duration=None):
    return {"task_id": task_id, "state": state, "start_date": start, "end_date": end, "duration": duration}


def test_task_tracker_reports_each_stage_once_in_the_order_it_ran():
    tracker = TaskTracker()
    assert tracker.update([_ti("ingest", None), _ti("dedup", None)]) == []
    first = tracker.update([_ti("ingest", "running", "2026-01-01T00:00:01"), _ti("dedup", "scheduled"),
                            _ti("split", "queued")])
    # queued or scheduled is waiting for the task slot, not running
    assert [(e["task"], e["state"]) for e in first] == [("ingest", "running")]
    # ingest ends, dedup runs, split started and ended between two polls: its start is still shown, once
    second = tracker.update([
        _ti("ingest", "success", "2026-01-01T00:00:01", "2026-01-01T00:00:30", 29.0),
        _ti("dedup", "running", "2026-01-01T00:00:31"),
        _ti("split", "success", "2026-01-01T00:00:32", "2026-01-01T00:00:33", 1.2),
        _ti("embed", "skipped"),
    ])
    assert [(e["task"], e["state"], e.get("seconds")) for e in second] == [
        ("ingest", "success", 29.0), ("dedup", "running", None), ("split", "running", None),
        ("split", "success", 1.2), ("embed", "skipped", None)]
    assert tracker.update([_ti("ingest", "success", "2026-01-01T00:00:01", "x", 29.0)]) == []  # never twice
    lines = [line for e in second for line in render({**e, "t": 30.0})]
    assert lines[0].endswith("ok      ingest 29.0 s") and lines[1].endswith("> dedup")


def test_loop_refuses_to_start_without_a_champion(tmp_path, monkeypatch, repo_root):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(repo_root / "params.yaml", ws / "params.yaml")
    monkeypatch.setenv("LLMOPS_ROOT", str(ws))
    printed: list[str] = []
    outcome = run_loop(LoopOptions(), echo=printed.append)
    assert outcome["ok"] is False and "run `make demo` first" in outcome["error"]
    assert any("ERROR: no champion in the registry yet" in line for line in printed), printed
    assert not (ws / "data" / "landing").exists()  # nothing dropped, nothing started
    recorded = [json.loads(line) for line in (ws / "logs" / "demo_loop" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in recorded] == ["error", "done"]


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_every_headline_step_renders_with_its_number(kind):
    sample = {
        "watcher": {"run_id": "r", "after_s": 4.0},
        "approval": {"task": "approve_new_sources", "answer": "Approve", "by": "admin (automatic)"},
        "landed": {"rows": 80, "sources": ["t0_reviews"], "landed_dir": "data/landed"},
        "monitor": {"run_id": "m", "drifted": True, "status": "ok", "triggered": ["topics"],
                    "p_values": {"topics": 1e-9}, "threshold": 0.0025, "report": "reports/monitor/x/data_drift.html"},
        "lifecycle": {"run_id": "l"},
        "gate": {"decision": "promote", "checks": 3, "passed": 3, "champion": 1},
        "promoted": {"promoted": True, "version": 2, "previous": 1, "deploy": "deployed"},
        "served": {"url": "http://127.0.0.1:8000", "version": 2, "champion_before": 1, "fingerprint": "m:2",
                   "reply": "Hello"},
    }[kind]
    line = render({"kind": kind, "t": 12.5, **sample})[0]
    assert line.startswith(f"[  12.5s] {STEPS[kind]}. "), line
