"""The guard's detectors: training (candidate heads compared on the validation split), threshold choice, test
metrics, a pickle-free model file, and loading for scoring.

Interface (used by serving's guard, the audit and evaluation):

    from pipelines.security.detectors import load_detector
    det = load_detector("models/guard", "toxicity")       # or "injection"
    det.score(["some text", ...]) -> list[float]          # probability of the positive class
    det.threshold                                         # float: score >= threshold is flagged
    judge = load_detector("models/guard", "harmful_compliance")
    judge.score([(request, response), ...])               # or judge.score(requests, responses)

A model is `models/guard/<name>/model.npz` (standardizer + dense layers: a logistic regression is one layer, the
MLP two) plus `meta.json` (threshold, head, features, encoder) and `card.md`; loading runs numpy only (plus MiniLM
for the features), no pickle.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from pipelines.security import features as F

KINDS = {"injection": "text", "toxicity": "text", "harmful_compliance": "pair"}


# ---------------------------------------------------------------- metrics
def auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    y = np.asarray(y).astype(int)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def rates_at(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    y = np.asarray(y).astype(int)
    p = s >= threshold
    tp, fp = int(np.sum(p & (y == 1))), int(np.sum(p & (y == 0)))
    fn, tn = int(np.sum(~p & (y == 1))), int(np.sum(~p & (y == 0)))
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / (tp + fn) if tp + fn else None
    return {"n": int(len(y)), "positives": tp + fn, "negatives": fp + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": _r(prec), "recall": _r(rec), "fpr": _r(fp / (fp + tn) if fp + tn else None),
            "f1": _r(2 * prec * rec / (prec + rec) if prec and rec else (0.0 if prec is not None and rec is not None else None))}


def _r(x):
    return None if x is None else round(float(x), 4)


def choose_threshold(y: np.ndarray, s: np.ndarray, rule: str, max_fpr: float | None) -> tuple[float, str]:
    """`max_fpr`: the lowest threshold whose FPR on the validation negatives is <= max_fpr (most recall within the
    false-alarm budget); `f1`: the threshold of best F1. Returns (threshold, how it was chosen)."""
    y = np.asarray(y).astype(int)
    cands = np.unique(np.concatenate([s, [0.5]]))
    if rule == "max_fpr":
        neg = np.sort(s[y == 0])
        if len(neg) == 0:
            return 0.5, "no validation negatives: 0.5"
        k = int(np.floor(max_fpr * len(neg)))  # negatives allowed at or above the threshold
        t = float(neg[len(neg) - k - 1]) + 1e-6 if k < len(neg) else float(neg[0])
        t = min(max(t, 1e-6), 1.0)
        return t, f"lowest threshold with validation FPR <= {max_fpr} ({k} of {len(neg)} negatives allowed)"
    best, best_t = -1.0, 0.5
    for t in cands:
        f1 = rates_at(y, s, t)["f1"] or 0.0
        if f1 > best:
            best, best_t = f1, float(t)
    return best_t, f"best validation F1 ({best:.4f})"


# ---------------------------------------------------------------- heads
class Head:
    """Standardizer + dense layers (ReLU between, sigmoid at the end), numpy forward pass."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]):
        self.mean, self.scale, self.layers = mean, scale, layers

    def predict(self, X: np.ndarray) -> np.ndarray:
        h = (X - self.mean) / self.scale
        for i, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        z = np.clip(h[:, 0], -40, 40)
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: Path) -> None:
        arrays = {"mean": self.mean, "scale": self.scale}
        for i, (W, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = W, b
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Head":
        with np.load(path, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("W"))
            return cls(z["mean"], z["scale"], [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)])


def fit_head(kind: str, X: np.ndarray, y: np.ndarray, seed: int) -> Head:
    """`logreg` (L2 logistic regression, balanced classes) or `mlp` (one hidden layer of 64, ReLU)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    mean = X.mean(axis=0)
    scale = X.std(axis=0) + 1e-6
    Z = (X - mean) / scale
    if kind == "logreg":
        m = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000)
        m.fit(Z, y)
        layers = [(m.coef_.T.astype(np.float32), m.intercept_.astype(np.float32))]
    elif kind == "mlp":
        # oversample the minority class to balance (MLPClassifier takes no class weights)
        rng = np.random.default_rng(seed)
        pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
        small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
        idx = np.concatenate([big, rng.choice(small, size=len(big), replace=True)]) if len(small) else np.arange(len(y))
        m = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=300, random_state=seed)
        m.fit(Z[idx], y[idx])
        layers = [(W.astype(np.float32), b.astype(np.float32)) for W, b in zip(m.coefs_, m.intercepts_)]
    else:
        raise ValueError(f"unknown head '{kind}' (logreg | mlp)")
    return Head(mean.astype(np.float32), scale.astype(np.float32), layers)


# ---------------------------------------------------------------- the detector
_ENCODERS: dict[str, F.Encoder] = {}
_ENC_LOCK = threading.Lock()


def shared_encoder(model_dir: str, threads: int | None = None, cache_dir: str | None = None,
                   quantization: str | None = None, backend: str = "torch",
                   onnx_dir: str | None = None) -> F.Encoder:
    """One MiniLM per process per model directory, quantization and backend (the guard's detectors share it)."""
    key = f"{model_dir}|{cache_dir}|{quantization}|{backend}"
    with _ENC_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = F.Encoder(model_dir, threads=threads, cache_dir=cache_dir, quantization=quantization,
                                       backend=backend, onnx_dir=onnx_dir)
        return _ENCODERS[key]


class Detector:
    def __init__(self, name: str, head: Head, meta: dict, encoder: F.Encoder):
        self.name, self.head, self.meta, self.encoder = name, head, meta, encoder
        self.kind = meta["kind"]
        self.threshold = float(meta["threshold"])

    def features(self, items, responses=None) -> np.ndarray:
        if self.kind == "text":
            if responses is not None:
                raise TypeError(f"{self.name} scores single texts: score(texts)")
            texts = [str(t) for t in items]
            return F.text_features(self.encoder, texts) if texts else np.zeros((0, 1))
        if responses is None:
            pairs = [tuple(p) for p in items]
            if any(len(p) != 2 for p in pairs):
                raise TypeError(f"{self.name} scores (request, response) pairs: score(pairs) or score(requests, responses)")
            requests, responses = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            requests = list(items)
            if len(requests) != len(responses):
                raise ValueError(f"{self.name}: {len(requests)} requests but {len(responses)} responses")
        if not requests:
            return np.zeros((0, 1))
        return F.pair_features(self.encoder, [str(r) for r in requests], [str(r) for r in responses])

    def score(self, items: Sequence, responses: Sequence[str] | None = None) -> list[float]:
        """Probability of the positive class for each text (or (request, response) pair)."""
        if self.kind == "text" and responses is None:
            texts = [str(t) for t in items]
            if not texts:
                return []
            X, owner = F.chunked_text_features(self.encoder, texts)
            best = np.zeros(len(texts))
            np.maximum.at(best, np.array(owner), self.head.predict(X))
            return [float(p) for p in best]
        X = self.features(items, responses)
        if len(X) == 0:
            return []
        return [float(p) for p in self.head.predict(X)]

    def flag(self, items: Sequence, responses: Sequence[str] | None = None) -> list[bool]:
        return [s >= self.threshold for s in self.score(items, responses)]


def load_detector(models_dir: str | Path, name: str, *, encoder: F.Encoder | None = None,
                  threads: int | None = None, backend: str = "torch", onnx_dir: str | Path | None = None) -> Detector:
    """The trained detector `name` (injection | toxicity | harmful_compliance) under `models_dir`. `backend`
    onnx runs the same fp32 encoder through ONNX Runtime (exported once into `onnx_dir`); an int8-trained detector
    keeps torch, whose int8 vectors it was trained on."""
    if name not in KINDS:
        raise KeyError(f"unknown detector '{name}'; known: {', '.join(KINDS)}")
    d = Path(models_dir) / name
    if not (d / "meta.json").exists():
        raise FileNotFoundError(f"no trained detector '{name}' in {d} (run `llmops run train_guard`)")
    meta = json.loads((d / "meta.json").read_text())
    head = Head.load(d / "model.npz")
    if encoder is None:
        from pipelines.embeddings.encoder import resolve_model_dir

        enc_dir = str(resolve_model_dir(meta["encoder"].get("model_package"), meta["encoder"].get("model_path")))
        quantization = meta["encoder"].get("quantization")
        if quantization:
            backend = "torch"
        encoder = shared_encoder(enc_dir, threads=threads, quantization=quantization, backend=backend,
                                 onnx_dir=str(onnx_dir) if onnx_dir else None)
    return Detector(name, head, meta, encoder)
