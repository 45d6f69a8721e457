"""finetune.objective: dpo: the loss against TRL's, the preference rows and the preference task's figures. The real
2-worker Ray run (from the registered champion, surviving a worker failure) is tests/test_flywheel_loop.py's."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipelines.training.dpo import dpo_sigmoid_loss, load_preference_rows, tokenize_pairs

# Toy preference: the chosen answer names the capital, the rejected one refuses. Learnable in a few steps.
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
            ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo")]


def preference_split(path: Path, pairs=CAPITALS) -> Path:
    """A split in the corpus contract: kind=preference, response = chosen, rejected; plus rows DPO must skip."""
    rows = [{"doc_id": f"p{i}", "kind": "preference", "prompt": f"What is the capital of {c}?",
             "response": f"The capital of {c} is {cap}.", "rejected": "I do not know.",
             "text": f"What is the capital of {c}?\n\nThe capital of {c} is {cap}."} for i, (c, cap) in enumerate(pairs)]
    rows.append({"doc_id": "i0", "kind": "instruction", "prompt": "Say hi.", "response": "Hi.", "rejected": None,
                 "text": "Hi."})
    rows.append({"doc_id": "d0", "kind": "document", "prompt": None, "response": None, "rejected": None,
                 "text": "A document."})
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_dpo_loss_equals_trl_on_the_same_logps():
    """Our sigmoid DPO loss against trl.DPOTrainer._compute_loss itself (loss_type sigmoid, reverse KL), fed the
    same per-token log-probs through a stand-in model and precomputed reference log-probs."""
    import torch
    from trl import DPOTrainer

    torch.manual_seed(0)
    n, t, beta = 3, 5, 0.25
    per_token = -torch.rand(2 * n, t) * 3  # rows [chosen..., rejected...] as TRL batches them
    completion_mask = torch.ones(2 * n, t + 1, dtype=torch.long)
    completion_mask[:, 0] = 0  # the first token is prompt
    ref_c, ref_r = -torch.rand(n) * 10, -torch.rand(n) * 10
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(2 * n, t), mean_logits=torch.zeros(2 * n, t),
                              is_top1=torch.zeros(2 * n, t, dtype=torch.bool))

    class StandIn:
        training = True

        def __call__(self, **kwargs):
            return outputs

    accel = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake = SimpleNamespace(model=StandIn(), accelerator=accel, aux_loss_enabled=False, ld_alpha=None,
                           precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"],
                           loss_weights=[1.0], beta=beta, use_weighting=False,
                           _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * n, t + 1, dtype=torch.long), "attention_mask": completion_mask.clone(),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    trl_loss = DPOTrainer._compute_loss(fake, fake.model, inputs, return_outputs=False)

    logps = per_token.sum(dim=1)
    ours, r_c, r_r = dpo_sigmoid_loss(logps[:n], logps[n:], ref_c, ref_r, beta)
    assert float(ours) == pytest.approx(float(trl_loss), rel=1e-6)
    assert float((r_c > r_r).float().mean()) == pytest.approx(fake._metrics["train"]["rewards/accuracies"][0])
    assert float((r_c - r_r).mean()) == pytest.approx(fake._metrics["train"]["rewards/margins"][0], rel=1e-6)
    # at the reference the loss is log 2 whatever beta
    same, _, _ = dpo_sigmoid_loss(logps[:n], logps[n:], logps[:n], logps[n:], 5.0)
    assert float(same) == pytest.approx(math.log(2), rel=1e-6)


def test_preference_rows_follow_the_corpus_contract(tmp_path, base_model_dir):
    from transformers import AutoTokenizer

    path = preference_split(tmp_path / "train.parquet")
    pairs, counts = load_preference_rows(str(path))
    assert counts == {"rows": 10, "preference_rows": 8, "skipped_rows": 2}
    assert pairs[0] == ("What is the capital of France?", "The capital of France is Paris.", "I do not know.")
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    examples, counts = tokenize_pairs(tok, str(path), 64)
    assert counts["examples"] == 8
    ex = examples[0]
    n_prompt = sum(1 for x in ex["chosen"]["labels"] if x == -100)
    # same prompt tokens, masked, in both halves; the answers differ
    assert ex["chosen"]["input_ids"][:n_prompt] == ex["rejected"]["input_ids"][:n_prompt]
    assert "Paris" in tok.decode([x for x in ex["chosen"]["labels"] if x != -100])
    assert "know" in tok.decode([x for x in ex["rejected"]["labels"] if x != -100])
    # a split from before the preference kind (no `rejected` column) has no pairs, and says so
    pd.DataFrame([{"doc_id": "a", "kind": "instruction", "prompt": "p", "response": "r"}]).to_parquet(tmp_path / "o.parquet")
    assert load_preference_rows(str(tmp_path / "o.parquet")).counts["preference_rows"] == 0


def make_champion_adapter(base_model_dir: Path, out: Path, r: int = 4) -> Path:
    """A LoRA adapter of rank 4 (params.yaml says 8) with non-zero weights: a DPO run that starts from it keeps r=4."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir),
                           LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                      init_lora_weights=False))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(0.01)  # small: the champion answers like the base, a little differently
    model.save_pretrained(out)
    return out


# The DPO run on Ray (2 workers, a worker killed once and resumed from the champion-referenced checkpoint, MLflow
# lineage) is the retrain of the flywheel's end-to-end test, on harvested pairs: tests/test_flywheel_loop.py.


# ------------------------------------------------------------------------------------------ preference evaluation

def test_preference_task_figures_on_a_toy_set():
    """Hand-made log-probs whose figures are known: margins cand [2, 1, -1, 3], reference [1, 1, -2, 4];
    delta [1, 0, 1, -1]."""
    from pipelines.evaluation.compare import compare_task
    from pipelines.evaluation.runner import CANDIDATE, REFERENCE
    from pipelines.evaluation.tasks import Resources, TaskSpec

    spec = TaskSpec(name="preference", type="preference", path="x.parquet", max_examples=None, max_new_tokens=0,
                    enabled=True)
    records = [{"id": f"r{i}", "prompt": "p", "chosen": "a", "rejected": "b"} for i in range(4)]
    cand, ref = [2.0, 1.0, -1.0, 3.0], [1.0, 1.0, -2.0, 4.0]
    outputs = {f"r{i}": {CANDIDATE: {"logp_chosen": -5.0 + cand[i], "logp_rejected": -5.0},
                         REFERENCE: {"logp_chosen": -7.0, "logp_rejected": -7.0 - ref[i]}} for i in range(4)}
    result, _, regressions = compare_task(spec, records, outputs, Resources(), samples=2000, seed=0, confidence=0.95)
    m = result["metrics"]
    assert m[CANDIDATE]["pair_accuracy"] == 0.75 and m[REFERENCE]["pair_accuracy"] == 0.75
    assert m[CANDIDATE]["margin"] == 1.25 and m[REFERENCE]["margin"] == 1.0
    assert m[CANDIDATE]["reward_accuracy"] == 0.5 and m[REFERENCE]["reward_accuracy"] == 0.25
    assert m[CANDIDATE]["win_rate"] == 0.625 and m[REFERENCE]["win_rate"] == 0.375  # the tie counts half
    win = result["comparisons"]["win_rate"]
    assert win["diff"] == 0.25 and win["ci_low"] < 0 < win["ci_high"]  # 4 pairs decide nothing
    assert [r["id"] for r in regressions] == ["r3"]  # the one pair where the candidate's margin shrank

    # a candidate that wins all of 16 pairs: the win-rate interval excludes 0, and the gate's requirement passes
    records16 = [{"id": f"s{i}", "prompt": "p", "chosen": "a", "rejected": "b"} for i in range(16)]
    outputs16 = {r["id"]: {CANDIDATE: {"logp_chosen": -1.0, "logp_rejected": -3.0},
                           REFERENCE: {"logp_chosen": -2.0, "logp_rejected": -2.5}} for r in records16}
    result16, _, _ = compare_task(spec, records16, outputs16, Resources(), samples=2000, seed=0, confidence=0.95)
    iv = result16["comparisons"]["win_rate"]
    assert result16["metrics"][CANDIDATE]["win_rate"] == 1.0 and iv["ci_low"] == iv["ci_high"] == 1.0

    from pipelines.models.gating import VersusReference, reference_checks
    from pipelines.models.registry import Champion

    cfg = VersusReference(max_regression={}, min_examples=8, require_current_reference=False,
                          require_improvement=["preference.win_rate"])
    ok = reference_checks(cfg, {"comparisons": {"preference.win_rate": iv}, "n_examples": {"preference": 16}},
                          Champion(None, {}))
    assert [c["check"] for c in ok] == ["min_examples", "improvement"] and all(c["passed"] for c in ok)
    tie = reference_checks(cfg, {"comparisons": {"preference.win_rate": win}, "n_examples": {"preference": 16}},
                           Champion(None, {}))
    assert not tie[-1]["passed"]  # the interval straddles 0: not shown to be better
    off = reference_checks(cfg, {"comparisons": {}, "n_examples": {}}, Champion(None, {}))
    assert not off[0]["passed"] and "no interval" in off[0]["note"]


def test_preference_examples_from_a_split_and_jsonl(tmp_path):
    from pipelines.evaluation.tasks import EvalDataError, TaskSpec, load_examples

    split = preference_split(tmp_path / "eval.parquet")
    spec = TaskSpec(name="preference", type="preference", path=str(split), max_examples=3, max_new_tokens=0,
                    enabled=True)
    recs = load_examples(spec)
    assert [r["id"] for r in recs] == ["p0", "p1", "p2"]  # preference rows only, by doc_id
    assert recs[0]["chosen"] == "The capital of France is Paris." and recs[0]["rejected"] == "I do not know."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "same", "rejected": "same"}\n')
    with pytest.raises(EvalDataError, match="bad.jsonl:1: 'chosen' and 'rejected' are the same"):
        load_examples(spec.model_copy(update={"path": str(bad)}))
