"""The sentence-transformers MiniLM as an ONNX Runtime session, for latency-bound single-text encoding (the guard).

Why not torch: in the request path the guard encodes one short text while the engine's decode threads hold both
cores. Under that contention torch's eager MiniLM pass stretched from ~15 ms to 85-340 ms here, where ONNX Runtime
(fused graph, no spin-waiting threads) stayed at ~15 ms, with vectors equal to torch's within 2e-7
(bench/results/guard_latency.md). sentence-transformers' own `backend="onnx"` would pull in `optimum` and its
own transformers constraints for one 6-layer encoder; torch's exporter, run once per model, does the same job.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("llmops.onnx")
_EXPORT_LOCK = threading.Lock()


def _check_pipeline(model_dir: Path) -> None:
    """Only Transformer -> mean Pooling -> Normalize is exported (what all-MiniLM-L6-v2 is); anything else is
    refused rather than encoded differently."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling = {}
    for m in modules:
        if m["type"].endswith("Pooling"):
            pooling = json.loads((model_dir / m["path"] / "config.json").read_text())
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if kinds != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"the onnx encoder backend exports Transformer + mean Pooling + Normalize; {model_dir} is "
                         f"{kinds} with {modes}: use backend torch")


def export(model: Any, model_dir: Path, path: Path) -> Path:
    """Exports the loaded SentenceTransformer `model` to `path` (atomic: a temporary file, then a rename)."""
    import torch

    _check_pipeline(model_dir)
    bert = model[0].auto_model.eval()

    class MeanPooledUnitVectors(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    sample = model.tokenizer(["an example sentence to trace"], return_tensors="pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on transformers' mask code; the vectors are checked equal
            torch.onnx.export(
                MeanPooledUnitVectors(bert), (sample["input_ids"], sample["attention_mask"]), tmp,
                input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "embedding": {0: "batch"}},
                opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OnnxEncoder:
    """`encode(texts, batch_size)` with the same unit vectors as `encoder.encode(model, ...)`."""

    def __init__(self, model: Any, model_dir: str | Path, export_dir: str | Path, fingerprint: str,
                 threads: int | None = None):
        import onnxruntime as ort

        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length or 128)
        path = Path(export_dir) / f"{fingerprint[:32]}.onnx"
        with _EXPORT_LOCK:
            if not path.exists():
                log.info("exporting %s to ONNX: %s", model_dir, path)
                export(model, Path(model_dir), path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or 0  # 0: ORT's default (one per core)
        opts.inter_op_num_threads = 1
        # idle threads must not spin: they would take cycles from the engine's decode on the same cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch with less padding
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")
            vecs = self.session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                           "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
            for i, v in zip(idx, vecs):
                out[i] = v
        return np.ascontiguousarray(np.stack(out), dtype=np.float32) if out else np.zeros((0, 384), np.float32)
