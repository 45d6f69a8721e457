#!/usr/bin/env bash
# GPU check (run on purpose on a machine with an NVIDIA GPU; nothing in the suite needs one). Bounded to < 8 min.
#   bench/gpu_check.sh            -> bench/results/gpu_check.json
# 1. finetune with use_gpu: true, dtype bfloat16 (1 Ray Train worker, 1 GPU) on the shipped sample;
# 2. evaluate-style scoring and greedy generation of the shipped model on the GPU (bf16): the evaluate stage has no
#    device setting yet, so this times the same model calls directly;
# reports tokens/s and MFU = 6 x params x train tokens/s (or 2 x params x scored tokens/s) / the GPU's bf16 peak.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-$(mktemp -d)}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}   # dense bf16 peak of an H100/H200 SXM; set it for another GPU
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA: install a CUDA build of torch 2.13'"
timeout 460 "$PY" - "$OUT" "$PEAK_TFLOPS" <<'PYEOF'
import json, sys, time
from pathlib import Path

import pandas as pd
import torch
import yaml

out, peak = Path(sys.argv[1]), float(sys.argv[2]) * 1e12
root = Path.cwd()
from pipelines.stages import finetune, prepare_base_model
from pipelines.stages.registry import shared_config, stage_config

base = root / "models" / "base"
if not (base / "config.json").exists():
    base = out / "base"
    prepare_base_model.run(stage_config("prepare_base_model", output_dir=str(base), metrics=str(out / "pbm.json")))
records = json.loads((root / "data/sample/raw/gpteacher_roleplay.json").read_text())
rows = [{"doc_id": f"gp{i}", "kind": "instruction", "prompt": r["instruction"] + ("\n\n" + r["input"] if r["input"] else ""),
         "response": r["response"], "text": r["response"]} for i, r in enumerate(records[:300])]
pd.DataFrame(rows[:256]).to_parquet(out / "train.parquet")
pd.DataFrame(rows[256:]).to_parquet(out / "eval.parquet")
cfg = stage_config("finetune", base_model_dir=str(base), train_path=str(out / "train.parquet"),
                   eval_path=str(out / "eval.parquet"), output_dir=str(out / "candidate"), num_workers=1,
                   use_gpu=True, cpus_per_worker=4, dtype="bfloat16", max_steps=60, per_device_batch_size=16,
                   max_length=256, checkpoint_every=0, eval_every=0, max_eval_examples=16,
                   storage_path=str(out / "ray"), mlflow={"enabled": False}, metrics=str(out / "finetune.json"),
                   loss_plot=str(out / "loss.csv"))
engines = shared_config("engines", ray={"address": None, "num_cpus": 8})
registry = shared_config("registry", tracking_uri=f"sqlite:///{out / 'mlruns.db'}", artifact_root=str(out / "art"))
report = finetune.run(cfg, engines, registry)

from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).cuda().eval()
n_params = sum(p.numel() for p in model.parameters())
texts = [r["prompt"] + "\n" + r["response"] for r in rows[:256]]
batch = tok(texts[:64], return_tensors="pt", padding=True, truncation=True, max_length=256).to("cuda")
with torch.no_grad():
    model(**batch); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10):
        model(**batch)
    torch.cuda.synchronize(); score_s = time.perf_counter() - t
scored_tps = 10 * int(batch["attention_mask"].sum()) / score_s
tok.padding_side = "left"
prompts = tok([r["prompt"] for r in rows[:32]], return_tensors="pt", padding=True, truncation=True, max_length=192).to("cuda")
with torch.no_grad():
    torch.cuda.synchronize(); t = time.perf_counter()
    gen = model.generate(**prompts, max_new_tokens=64, do_sample=False, min_new_tokens=64)
    torch.cuda.synchronize(); gen_s = time.perf_counter() - t
gen_tps = 32 * 64 / gen_s
result = {
    "gpu": torch.cuda.get_device_name(0), "params": n_params, "peak_tflops_bf16": peak / 1e12,
    "finetune": {"steps": report["steps"], "tokens_per_second": report["tokens_per_second"],
                 "mfu": round(6 * n_params * report["tokens_per_second"] / peak, 5), "seconds": report["seconds"]},
    "evaluate_scoring": {"tokens_per_second": round(scored_tps, 1), "mfu": round(2 * n_params * scored_tps / peak, 5)},
    "generation": {"tokens_per_second": round(gen_tps, 1), "batch": 32, "new_tokens": 64},
}
Path("bench/results").mkdir(parents=True, exist_ok=True)
Path("bench/results/gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PYEOF
