"""finetune stage: prompt masking, deterministic data path, and one real 2-worker Ray Train run on tiny data."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from pipelines.stages import finetune
from pipelines.training.sft import IGNORE_INDEX, format_example, shard_batches, tokenize_split

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "sample" / "raw" / "gpteacher_roleplay.json"


def _tiny_split(path: Path, start: int, n: int) -> Path:
    records = json.loads(RAW.read_text(encoding="utf-8"))[start:start + n]
    rows = [
        {
            "doc_id": f"gp{start + i}",
            "kind": "instruction",
            "prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""),
            "response": r["response"],
            "text": r["response"],
        }
        for i, r in enumerate(records)
    ]
    rows.append({"doc_id": "doc0", "kind": "document", "prompt": None, "response": None, "text": "A document."})
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def test_prompt_tokens_are_masked(tokenizer):
    ex = format_example(tokenizer, "What is the capital of France?", "Paris.", max_length=512)
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert len(ex["input_ids"]) == len(ex["labels"]) > n_prompt
    assert all(label == IGNORE_INDEX for label in ex["labels"][:n_prompt])
    answer = ex["labels"][n_prompt:]
    assert all(label != IGNORE_INDEX for label in answer)
    assert answer == ex["input_ids"][n_prompt:]
    assert "Paris." in tokenizer.decode(answer)
    assert tokenizer.decode(answer).rstrip().endswith(tokenizer.eos_token)  # the model learns to stop


def test_truncation_and_prompt_only_examples(tokenizer):
    ex = format_example(tokenizer, "Say hi.", "word " * 200, max_length=40)
    assert len(ex["input_ids"]) == len(ex["labels"]) == 40
    # a prompt longer than max_length leaves nothing to learn: the example is dropped, not trained on
    assert format_example(tokenizer, "long prompt " * 100, "answer", max_length=32) is None


def test_data_path_is_deterministic(tokenizer, tmp_path):
    path = _tiny_split(tmp_path / "train.parquet", 0, 10)
    a, counts = tokenize_split(tokenizer, str(path), 64)
    b, _ = tokenize_split(tokenizer, str(path), 64)
    assert a == b
    assert counts["rows"] == 11 and counts["instruction_rows"] == 10 and counts["skipped_rows"] == 1
    assert shard_batches(10, 2, 0, 2, 42, 0) == shard_batches(10, 2, 0, 2, 42, 0)
    assert shard_batches(10, 2, 0, 2, 42, 0) != shard_batches(10, 2, 0, 2, 42, 1)  # reshuffled each epoch
    r0, r1 = shard_batches(10, 2, 0, 2, 42, 0), shard_batches(10, 2, 1, 2, 42, 0)
    assert len(r0) == len(r1)  # DDP: every rank takes the same number of steps
    assert not {i for b in r0 for i in b} & {i for b in r1 for i in b}  # ranks see disjoint rows


def test_finetune_two_workers(ray_local, base_model_dir, tmp_path):
    cfg = finetune.Config(
        base_model_dir=str(base_model_dir),
        train_path=str(_tiny_split(tmp_path / "train.parquet", 0, 12)),
        eval_path=str(_tiny_split(tmp_path / "eval.parquet", 100, 4)),
        output_dir=str(tmp_path / "candidate"),
        num_workers=2,
        max_steps=2,
        per_device_batch_size=1,
        max_length=128,
        max_eval_examples=4,
        metrics=str(tmp_path / "metrics.json"),
        loss_plot=str(tmp_path / "loss.csv"),
    )
    report = finetune.run(cfg)

    assert report["steps"] == 2
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "tokens_per_second", "startup_seconds"):
        assert math.isfinite(report[key]), key
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2
    with open(tmp_path / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert float(rows[0]["loss"]) == pytest.approx(report["train_loss_first"], rel=1e-5)

    out = Path(cfg.output_dir)
    meta = json.loads((out / "training_meta.json").read_text())
    assert meta["steps"] == 2 and meta["params"]["lora"]["r"] == 8
    assert (out / "adapter_config.json").exists() and (out / "tokenizer_config.json").exists()
    assert not list(out.parent.glob(".candidate.tmp-*"))  # atomic: no temp dir left behind

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # the adapter was trained (B starts at 0)
