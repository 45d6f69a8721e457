"""evaluate on tiny real data with the real base model and a one-step LoRA adapter."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipelines.io import read_json
from pipelines.stages.registry import stage_config


@pytest.fixture(scope="module")
def candidate_dir(base_model_dir, tmp_path_factory):
    from pipelines.models.lm import make_smoke_adapter

    out = tmp_path_factory.getbasetemp() / "smoke_candidate"  # shared by the model tests of this session
    if not (out / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, out)
    return out


def _tiny_split(repo_root, path, start, n):
    rows = json.loads((repo_root / "data/sample/raw/gpteacher_roleplay.json").read_text())[start:start + n]
    recs = []
    for i, r in enumerate(rows):
        prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        recs.append(dict(doc_id=f"d{start + i}", source="gpteacher_roleplay", licence="MIT", kind="instruction",
                         text=prompt, prompt=prompt, response=r["response"], title=None, n_chars=len(prompt)))
    recs.append(dict(doc_id="doc", source="x", licence="x", kind="document", text="a paragraph", prompt=None,
                     response=None, title="t", n_chars=11))
    pd.DataFrame(recs).to_parquet(path)
    return path


def test_evaluate_metrics_on_tiny_data(repo_root, base_model_dir, candidate_dir, tmp_path):
    from pipelines.stages import evaluate

    cfg = stage_config(
        "evaluate", base_model_dir=str(base_model_dir), candidate_dir=str(candidate_dir),
        eval_path=str(_tiny_split(repo_root, tmp_path / "eval.parquet", 0, 2)),
        test_path=str(_tiny_split(repo_root, tmp_path / "test.parquet", 10, 2)),
        max_eval_examples=2, max_generation_examples=2, max_new_tokens=6, max_length=96, max_prompt_tokens=64,
        metrics=str(tmp_path / "m" / "evaluate.json"), report=str(tmp_path / "r" / "evaluate.html"),
    )
    report = evaluate.run(cfg)
    m = read_json(cfg.metrics)
    assert m["n_examples"] == {"perplexity": 2, "generation": 2}
    for side in ("base", "candidate"):
        ppl = m[side]["perplexity"]
        assert math.isfinite(ppl) and ppl > 1
        assert 0.0 <= m[side]["rouge_l"] <= 1.0
        assert m[side]["scored_tokens"] > 0
    assert m["delta"]["perplexity"] == pytest.approx(m["candidate"]["perplexity"] - m["base"]["perplexity"], abs=1e-3)
    assert len(m["candidate_sha256"]) == 64
    assert report["candidate_perplexity"] == m["candidate"]["perplexity"]
    page = (tmp_path / "r" / "evaluate.html").read_text()
    assert "<table>" in page and "ROUGE-L" in page and "perplexity" in page
    assert not list((tmp_path / "m").glob(".*tmp*"))  # atomic writes leave no temp files


def test_evaluate_refuses_a_split_without_instructions(base_model_dir, candidate_dir, tmp_path):
    from pipelines.stages import evaluate
    from pipelines.errors import StageFailed

    empty = tmp_path / "docs.parquet"
    pd.DataFrame([dict(doc_id="a", kind="document", prompt=None, response=None)]).to_parquet(empty)
    cfg = stage_config("evaluate", base_model_dir=str(base_model_dir), candidate_dir=str(candidate_dir),
                       eval_path=str(empty), test_path=str(empty), metrics=str(tmp_path / "m.json"),
                       report=str(tmp_path / "r.html"))
    with pytest.raises(StageFailed, match="no instruction rows"):
        evaluate.run(cfg)


def test_response_only_nll_ignores_prompt(base_model_dir):
    from pipelines.models import lm

    tok = lm.load_tokenizer(base_model_dir)
    ids, n_prompt = lm.build_sft_example(tok, "Say hi.", "Hi!", 64)
    assert ids[n_prompt - 1] != ids[-1] and ids[-1] == lm.end_of_turn_id(tok)
    assert tok.decode(ids[n_prompt:]).startswith("Hi!")
    cut = lm.truncate_middle(list(range(100)), 10)
    assert cut == [0, 1, 2, 3, 4, 5, 96, 97, 98, 99]
