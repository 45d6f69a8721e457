"""Online evaluation of the serving request log: sampled, scored, rates over thresholds -> alerts."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.config import config_from_params
from pipelines.monitoring.online_eval import INSUFFICIENT, OnlineEvalConfig, evaluate_window, groundedness

CONTEXT = {"doc_id": "d1", "chunk_id": "d1:0000",
           "text": "The Amazon rainforest covers much of the Amazon basin of South America."}


def cfg(tmp_path: Path, log: Path, **overrides) -> OnlineEvalConfig:
    return config_from_params("online_eval", OnlineEvalConfig,
                              {"request_log": str(log), "metrics": str(tmp_path / "online_eval.json"), **overrides})


def rec(i: int, **fields) -> dict:
    base = {"ts": f"2026-12-02T13:{i // 60:02d}:{i % 60:02d}Z", "request_id": f"r{i}", "key_id": "k1",
            "model": "llmops-candidate", "model_version": "3", "alias": "champion", "mode": "chat", "status": 200,
            "prompt": f"Please summarise report number {i}.", "prompt_sha256": "x",
            "response": f"Report {i} says revenue grew in the third quarter.", "prompt_tokens": 9,
            "completion_tokens": 12, "latency_ms": 800.0, "ttft_ms": None,
            "pii_found": {"prompt": {}, "response": {}}, "guard": {"input": "allow", "output": "allow", "reasons": []},
            "contexts": None}
    base.update(fields)
    return base


def write_log(path: Path, records: list[dict], extra_lines: list[str] = ()) -> Path:
    path.write_text("\n".join([json.dumps(r) for r in records] + list(extra_lines)) + "\n")
    return path


def test_groundedness_is_the_share_of_answer_words_in_the_contexts():
    assert groundedness("The Amazon rainforest covers South America.", [CONTEXT]) == 1.0
    assert groundedness("Bananas grow on Mars.", [CONTEXT]) == 0.0
    assert groundedness("It is.", [CONTEXT]) is None and groundedness("Amazon", None) is None


def test_clean_window_raises_no_alert(tmp_path):
    records = [rec(i) for i in range(60)] + [
        rec(60 + i, mode="rag", contexts=[CONTEXT], response="The Amazon rainforest covers the Amazon basin.")
        for i in range(20)]
    report = evaluate_window(cfg(tmp_path, write_log(tmp_path / "log.jsonl", records)))
    assert report["status"] == "ok" and report["alerted"] is False, report["alerts"]
    assert report["sampled"] == 80 and report["counts"]["rag_judged"] == 20
    assert report["rates"]["ungrounded_rate"] == 0.0 and report["mean_groundedness"] == 1.0
    assert json.loads((tmp_path / "online_eval.json").read_text())["alerted"] is False


def test_each_scorer_raises_its_alert(tmp_path):
    records = [rec(i) for i in range(40)]
    records += [rec(40 + i, response="Shut up you stupid bitch, fuck off.") for i in range(4)]  # lexicon words
    records += [rec(50 + i, response="Write to jane.doe@example.com for it.") for i in range(2)]  # redactor finds it
    records += [rec(55, pii_found={"prompt": {}, "response": {"PHONE": 1}})]  # server counted a leak
    records += [rec(60 + i, guard={"input": "block", "output": "allow", "reasons": ["injection"]}) for i in range(16)]
    records += [rec(80 + i, mode="rag", contexts=[CONTEXT], response="Bananas are grown commercially on Mars.")
                for i in range(6)]
    records += [rec(90 + i, status=500, response=None) for i in range(5)]
    report = evaluate_window(cfg(tmp_path, write_log(tmp_path / "log.jsonl", records), sample_size=1000))
    alerted = {a["metric"] for a in report["alerts"]}
    assert alerted == {"toxic_response_rate", "pii_leak_rate", "guard_block_rate", "ungrounded_rate", "error_rate"}
    c = report["counts"]
    assert (c["toxic_response"], c["pii_leak"], c["guard_block"], c["ungrounded"], c["errors"]) == (4, 3, 16, 6, 5)
    assert report["eligible"] == 69 and report["sampled"] == 69
    assert any("ungrounded" in w for e in report["examples"] for w in e["why"])


def test_sample_is_seeded_and_bounded(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [rec(i) for i in range(300)])
    a = evaluate_window(cfg(tmp_path, log, sample_size=50, seed=1))
    b = evaluate_window(cfg(tmp_path, log, sample_size=50, seed=1))
    assert a["sampled"] == 50 and a["rates"] == b["rates"] and a["eligible"] == 300


def test_empty_missing_or_tiny_window_is_not_enough_data(tmp_path):
    empty = write_log(tmp_path / "empty.jsonl", [])
    for log in (empty, tmp_path / "absent.jsonl"):
        report = evaluate_window(cfg(tmp_path, log))
        assert report["status"] == INSUFFICIENT and report["alerted"] is False and report["alerts"] == []
    tiny = write_log(tmp_path / "tiny.jsonl", [rec(i, response="you stupid bitch") for i in range(5)])
    report = evaluate_window(cfg(tmp_path, tiny))
    assert report["status"] == INSUFFICIENT and "5 scorable requests" in report["reason"]


def test_corrupt_lines_are_counted_and_the_window_bounds_apply(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [rec(i) for i in range(60)], ["{not json", '"a string"'])
    report = evaluate_window(cfg(tmp_path, log, since="2026-12-02T13:00:10Z", until="2026-12-02T13:00:50Z"))
    assert report["log"]["rejected"] == 2 and [r["line"] for r in report["rejects"]] == [61, 62]
    assert report["eligible"] == 40 and report["log"]["outside_window"] == 20
