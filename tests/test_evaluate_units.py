"""evaluate without a model: input validation (file:line, before any model loads), text metrics, the paired
bootstrap (coverage of a known difference), the judge's mechanics against a local HTTP server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from pipelines.evaluation import text_metrics as tm
from pipelines.evaluation.bootstrap import Stat, one_sample_interval, paired_interval
from pipelines.evaluation.tasks import FAMILIES, EvalDataError, TaskSpec, check_types, load_examples
from pipelines.stages.registry import shared_config, stage_config


def _spec(tmp_path, type_, lines, name="t", max_examples=None):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return TaskSpec(name=name, type=type_, path=str(path), max_examples=max_examples, max_new_tokens=4, enabled=True)


def test_shipped_sets_are_valid(repo_root):
    cfg = stage_config("evaluate")
    check_types(cfg.tasks, repo_root / "params.yaml")
    for t in cfg.tasks:
        if t.path.endswith(".jsonl"):
            assert len(load_examples(t)) == t.max_examples, t.name
    mc = load_examples(next(t for t in cfg.tasks if t.type == "multiple_choice"))
    assert {r["answer"] for r in mc} == {0, 1}  # the right answer is not always first


@pytest.mark.parametrize("type_,lines,message", [
    ("multiple_choice", [{"question": "q", "choices": ["a", "b"], "answer": 0},
                         {"question": "q", "choices": ["a", "b"]}], r"t\.jsonl:2: missing field 'answer'"),
    ("multiple_choice", [{"question": "q", "choices": ["a", "b"], "answer": 2}],
     r"t\.jsonl:1: choice index 2 out of range \(0\.\.1\)"),
    ("extractive_qa", [{"question": "q", "context": "c", "answers": []}], r"t\.jsonl:1: field 'answers' is empty"),
    ("counterfactual", [{"template": "no slot", "terms": ["a", "b"]}], r"t\.jsonl:1: 'template' has no \{term\}"),
    ("rag", ["", "{not json"], r"t\.jsonl:2: not valid JSON"),
    ("latency", [{"prompt": 3}], r"t\.jsonl:1: field 'prompt' must be a string"),
    ("toxicity", [], r"t\.jsonl: empty set"),
])
def test_bad_input_names_file_and_line(tmp_path, type_, lines, message):
    with pytest.raises(EvalDataError, match=message):
        load_examples(_spec(tmp_path, type_, lines))


def test_unknown_task_type_is_refused_with_its_params_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  tasks:\n    - name: x\n      type: summarisation\n")
    spec = TaskSpec(name="x", type="summarisation", path="x.jsonl", max_examples=1, max_new_tokens=1, enabled=True)
    with pytest.raises(EvalDataError, match=r"params\.yaml:4: evaluate\.tasks\[0\] 'x': unknown task type "
                                            r"'summarisation' \(known: perplexity, generation"):
        check_types([spec], params)


def test_stage_refuses_bad_data_before_loading_a_model(tmp_path):
    """The candidate and base paths do not exist: only the data check can have produced this error."""
    from pipelines.stages import evaluate

    bad = _spec(tmp_path, "multiple_choice", [{"question": "q", "choices": ["a"], "answer": 0}])
    cfg = stage_config("evaluate", tasks=[bad.model_dump()], candidate_dir=str(tmp_path / "nope"),
                       base_model_dir=str(tmp_path / "nope"))
    with pytest.raises(EvalDataError, match=r"t\.jsonl:1: 'choices' must hold at least 2"):
        evaluate.run(cfg, engines=shared_config("engines"), registry=shared_config("registry"))


def test_squad_metrics_and_rag_scores():
    assert tm.exact_match("The Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert tm.token_f1("Denver in Colorado", ["Denver Broncos"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert tm.token_f1("", ["x"]) == 0.0
    assert tm.context_recall(["Saxon Garden"], ["It stood in the saxon garden, Warsaw."]) == 1.0
    assert tm.context_recall(["Saxon Garden"], ["elsewhere"]) == 0.0
    assert tm.groundedness("Warsaw garden theatre", ["The theatre in the Saxon garden of Warsaw"]) == 1.0
    assert tm.groundedness("Paris", ["Warsaw"]) == 0.0


def test_multiple_choice_summed_vs_length_normalised():
    fam = FAMILIES["multiple_choice"]
    recs = [{"id": "1", "question": "q", "choices": ["short", "a much longer choice"], "answer": 1}]
    cols = fam.columns(recs, [{"nll": [5.0, 8.0]}], None)  # summed prefers 0; per character prefers 1
    assert cols["acc"].tolist() == [0.0] and cols["acc_norm"].tolist() == [1.0]


def test_counterfactual_and_toxicity_columns_with_a_detector():
    from pipelines.monitoring.descriptors import ToxicityScorer

    class Lexicon(ToxicityScorer):  # the detector interface (score, threshold) over the shipped lexicon
        threshold = 0.1

    det = Lexicon()
    toxic_word = sorted(det.lexicon)[0]
    from pipelines.evaluation.tasks import Resources

    res = Resources(detector=det)
    fam = FAMILIES["counterfactual"]
    outs = [{"a": "I'm sorry, I can't help.", "b": "Sure, here it is.", "len_a": 6, "len_b": 5},
            {"a": "Fine.", "b": f"{toxic_word} {toxic_word}", "len_a": 2, "len_b": 3}]
    cols = fam.columns([{}, {}], outs, res)
    stats = {s.name: s.value(cols) for s in fam.stats(res)}
    assert stats["refusal_gap"] == 0.5 and stats["length_gap"] == 0.0 and stats["toxicity_gap"] == 0.5
    tox = FAMILIES["toxicity"].columns([{}, {}], [{"text": "hello there"}, {"text": toxic_word}], res)
    assert tox["toxic"].tolist() == [0.0, 1.0]


def test_paired_bootstrap_covers_a_known_difference():
    """Paired accuracy data with a true difference of +0.10: the 95% interval covers it in ~95% of repeated
    experiments (and excludes 0 in most of them: the pairing removes the shared example difficulty)."""
    rng = np.random.default_rng(0)
    stat = Stat("acc", "higher", "mean", ("x",))
    covered = excludes_zero = 0
    trials, n = 200, 400
    for t in range(trials):
        difficulty = rng.random(n)
        ref = (rng.random(n) < 0.3 + 0.5 * difficulty).astype(float)
        flip = rng.random(n) < 0.10 / (1 - 0.55)  # lifts the expected accuracy by 0.10 (ref mean is 0.55)
        cand = np.where(ref == 1, 1.0, flip.astype(float))
        iv = paired_interval(stat, {"x": cand}, {"x": ref}, samples=1000, seed=t, confidence=0.95)
        covered += iv["ci_low"] <= 0.10 <= iv["ci_high"]
        excludes_zero += iv["ci_low"] > 0
    assert 0.90 <= covered / trials <= 0.99
    assert excludes_zero / trials > 0.9
    again = paired_interval(stat, {"x": cand}, {"x": ref}, samples=1000, seed=7, confidence=0.95)
    assert again == paired_interval(stat, {"x": cand}, {"x": ref}, samples=1000, seed=7, confidence=0.95)  # seeded


def test_ratio_gap_and_quantile_statistics():
    ppl = Stat("perplexity", "lower", "ratio", ("nll", "tok"), exp=True)
    assert ppl.value({"nll": np.array([2.0, 4.0]), "tok": np.array([2, 2])}) == pytest.approx(np.exp(1.5))
    p95 = Stat("p95", "lower", "quantile", ("s",), q=0.95)
    iv = paired_interval(p95, {"s": np.arange(100.0) + 1}, {"s": np.arange(100.0)}, samples=200, seed=0,
                         confidence=0.9)
    assert iv["diff"] == pytest.approx(1.0) and iv["ci_low"] <= 1.0 <= iv["ci_high"]
    lo, hi = one_sample_interval(np.array([1.0, 0.5, 0.0, 1.0]), samples=500, seed=0, confidence=0.95)
    assert lo < 0.625 < hi


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that always prefers the answer containing 'GOOD' (and says TIE
    when both or neither do): position-independent, so the swap must turn it into clean wins and losses."""
    calls: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append({"auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][0]["content"]
        a = text.split("Answer A:")[1].split("Answer B:")[0]
        b = text.split("Answer B:")[1]
        verdict = "TIE" if ("GOOD" in a) == ("GOOD" in b) else ("A" if "GOOD" in a else "B")
        if "POSITION" in text:  # a position-biased judge: always A
            verdict = "A"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": f" {verdict}."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_judge_position_swap_and_tie_rule(monkeypatch):
    from pipelines.evaluation.judge import JudgeConfig, judge_pairs, parse_verdict

    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("JUDGE_KEY", "sk-test")
        cfg = JudgeConfig(enabled=True, base_url=f"http://127.0.0.1:{server.server_port}/v1", model="judge",
                          api_key_env="JUDGE_KEY", tasks=["generation"], max_examples=8, timeout_s=5)
        out = judge_pairs(cfg, [("g", "1", "q", "GOOD answer", "bad"), ("g", "2", "q", "bad", "GOOD"),
                                ("g", "3", "q", "same", "same"), ("g", "4", "POSITION", "x", "y")])
    finally:
        server.shutdown()
    assert [o["outcome"] for o in out] == ["win", "loss", "tie", "tie"]  # the always-A judge gets no win
    assert [o["score"] for o in out] == [1.0, 0.0, 0.5, 0.5]
    assert (out[0]["first"], out[0]["second"]) == ("A", "B")
    assert len(_Judge.calls) == 8 and _Judge.calls[0]["auth"] == "Bearer sk-test"
    assert _Judge.calls[0]["body"]["temperature"] == 0
    assert parse_verdict("I think b") == "B" and parse_verdict("no idea") == "INVALID"


def test_champion_lookup_without_registry_is_the_base(tmp_path):
    from pipelines.evaluation.tracking import champion_adapter

    registry = shared_config("registry", tracking_uri=f"sqlite:///{tmp_path}/none.db", model_name="m")
    champ = champion_adapter(registry, tmp_path / "dl")
    assert champ.adapter_dir is None and champ.reference["kind"] == "base"
    assert not (tmp_path / "none.db").exists()


def test_toxicity_family_with_the_guards_detector(guard_models):
    """The guard's trained toxicity detector (issue 15, train_guard; here the session's test-sized one) behind the
    toxicity family's columns: the same classifier, the same scores and threshold the runtime guard uses."""
    from pipelines.evaluation.tasks import Resources
    from pipelines.security.detectors import load_detector

    det = load_detector(guard_models["dir"], "toxicity")
    texts = ["You are a stupid worthless idiot and I hate you", "Have a nice day, thank you for the help."]
    cols = FAMILIES["toxicity"].columns([{}, {}], [{"text": t} for t in texts], Resources(detector=det))
    assert cols["toxicity"].tolist() == pytest.approx(det.score(texts), abs=1e-6)
    assert cols["toxicity"][0] > cols["toxicity"][1]
    assert cols["toxic"].tolist() == [float(s >= det.threshold) for s in det.score(texts)]


def test_blocks_are_handed_out_costliest_first_and_cover_every_record():
    """The actor pool takes blocks in list order: longest-first (LPT) by estimated cost, so a long generation block
    does not start last while the other actors idle. Every record is in exactly one block, whatever the order."""
    from pipelines.evaluation.runner import make_blocks

    def spec(name, type_, new_tokens):
        return TaskSpec(name=name, type=type_, path="-", max_examples=None, max_new_tokens=new_tokens, enabled=True)

    specs = [spec("ppl", "perplexity", 32), spec("lat", "latency", 32), spec("gen", "generation", 32),
             spec("rag", "rag", 32)]
    examples = {"ppl": [{"id": f"p{i}", "prompt": "x" * 400, "response": "y"} for i in range(5)],
                "lat": [{"id": f"l{i}", "prompt": "hi"} for i in range(3)],
                "gen": [{"id": f"g{i}", "prompt": "hi", "response": "y"} for i in range(3)],
                "rag": [{"id": f"r{i}", "question": "q", "answers": ["a"], "contexts": ["c" * 800]} for i in range(3)]}
    blocks = make_blocks(examples, batch_size=4, specs=specs)
    # rag: 6 prompts padded to the long contexts, in 2 batched passes; latency: 3 generations one at a time;
    # gen: 1 batched pass; perplexity: prefill only (its 4- and 1-record blocks last, the bigger one first)
    assert [(b.task, len(b.ids)) for b in blocks] == [("rag", 3), ("lat", 3), ("gen", 3), ("ppl", 4), ("ppl", 1)]
    ids = [i for b in blocks for i in b.ids]
    assert sorted(ids) == sorted(r["id"] for recs in examples.values() for r in recs) and len(ids) == len(set(ids))
    # without specs: task order, as before
    assert [b.task for b in make_blocks(examples, batch_size=4)] == ["ppl", "ppl", "lat", "gen", "rag"]
