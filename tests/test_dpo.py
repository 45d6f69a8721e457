"""finetune.objective: dpo: the loss against TRL's, the preference rows, and one real 2-worker Ray run that starts
from a registered champion, survives a worker failure and learns the training pairs' preference."""
from __future__ import annotations

import json
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


def register_champion(registry, adapter_dir: Path) -> int:
    """Register `adapter_dir` as a version of registry.model_name with the champion alias (what promote leaves)."""
    from pipelines.models.registry import client as mlflow_client
    from pipelines.models.registry import ensure_experiment

    c = mlflow_client(registry.tracking_uri)
    ensure_experiment(c, registry)
    c.create_registered_model(registry.model_name)
    v = c.create_model_version(registry.model_name, source=str(adapter_dir))
    c.set_registered_model_alias(registry.model_name, registry.alias, v.version)
    return int(v.version)


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


def test_dpo_on_ray_from_the_champion_survives_a_worker_failure(ray_local, base_model_dir, tmp_path):
    """2 workers x 1 pair, 4 steps, checkpoint every 2, rank 1 killed after step 3 once: the group resumes from the
    step-2 checkpoint with the reference log-probs it saved (not recomputed from the trained model). The policy
    starts from the registered champion's adapter (rank 4), which is also the reference. On the training pairs the
    DPO loss ends below log 2 (its value at the reference) and the held-out reward margin is positive."""
    from pipelines.stages import finetune
    from pipelines.stages.registry import shared_config, stage_config

    registry = shared_config("registry", tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
                             artifact_root=str(tmp_path / "mlart"))
    version = register_champion(registry, make_champion_adapter(base_model_dir, tmp_path / "champion"))
    train = preference_split(tmp_path / "train.parquet")
    cfg = stage_config(
        "finetune", base_model_dir=str(base_model_dir), train_path=str(train), eval_path=str(train),
        output_dir=str(tmp_path / "candidate"), num_workers=2, max_steps=4, checkpoint_every=2, eval_every=2,
        max_failures=1, per_device_batch_size=1, max_length=64, max_eval_examples=8, learning_rate=0.005,
        objective="dpo", dpo={"beta": 0.1, "reference": "champion"}, storage_path=str(tmp_path / "ray"),
        mlflow={"enabled": True}, metrics=str(tmp_path / "metrics.json"), loss_plot=str(tmp_path / "loss.csv"))
    engines = shared_config("engines", ray={"address": None, "num_cpus": 2})
    report = finetune.run(cfg, engines, registry, _worker_overrides={
        "_fail_once": {"rank": 1, "after_step": 3, "marker_dir": str(tmp_path)}})

    assert (tmp_path / "failed_once").read_text() == "3"
    assert report["steps"] == 4 and report["resumed_from_step"] == 2
    assert report["objective"] == "dpo" and report["train_examples"] == 8
    d = report["dpo"]
    assert d["reference"]["kind"] == "champion" and d["reference"]["version"] == version
    # step 1: the policy is the reference, so every margin is 0 and the loss is log 2
    assert d["reward_margin_first"] == pytest.approx(0.0, abs=1e-6)
    assert report["train_loss_first"] == pytest.approx(math.log(2), abs=1e-5)
    # learnt: on the (training) pairs the chosen answer's implicit reward is above the rejected one's
    assert report["eval_loss"] < math.log(2)
    assert d["eval_reward_margin"] > 0 and d["eval_reward_accuracy"] >= 0.75
    assert [s for s, _ in report["eval_history"]] == [2, 4]

    out = Path(cfg.output_dir)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # continued the champion's adapter
    meta = json.loads((out / "training_meta.json").read_text())
    assert meta["objective"] == "dpo" and meta["data"]["train"]["preference_rows"] == 8
    assert json.loads((out / "canaries.json").read_text())["canaries"] == []  # nothing planted in a DPO run

    from pipelines.models.registry import client as mlflow_client

    run = mlflow_client(registry.tracking_uri).get_run(meta["mlflow_run_id"])
    assert run.data.params["objective"] == "dpo" and run.data.params["dpo.beta"] == "0.1"
    assert run.data.tags["dpo.reference"] == f"champion:v{version}"
    assert "rewards/margins" in run.data.metrics

    # the preference task on these pairs, candidate vs the champion in one evaluator (the runner's single-process
    # path): the DPO candidate prefers the chosen answers more than the champion on every pair
    from pipelines.evaluation import compare, runner
    from pipelines.evaluation.tasks import Resources, TaskSpec, load_examples

    spec = TaskSpec(name="preference", type="preference", path=str(train), max_examples=8, max_new_tokens=0,
                    enabled=True)
    records = load_examples(spec)
    kwargs = runner.evaluator_kwargs(base_model_dir=str(base_model_dir), candidate_dir=str(out),
                                     champion_dir=str(tmp_path / "champion"), specs=[spec], threads=2, batch_size=8,
                                     max_prompt_tokens=256, max_length=128, use_gpu=False)
    res = runner.run_local(runner.make_blocks({"preference": records}, 8, [spec]), kwargs)
    result, _, _ = compare.compare_task(spec, records, res.outputs["preference"], Resources(), samples=1000, seed=0,
                                        confidence=0.95)
    cand = result["metrics"][runner.CANDIDATE]
    assert cand["win_rate"] >= 0.875 and cand["reward_accuracy"] >= 0.875
    assert cand["pair_accuracy"] >= result["metrics"][runner.REFERENCE]["pair_accuracy"]
    assert result["comparisons"]["win_rate"]["ci_low"] > 0


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
