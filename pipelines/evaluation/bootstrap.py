"""Paired bootstrap confidence intervals for metric differences (candidate - reference).

Both models answered the same examples, so each resample draws example indices once and recomputes the
metric for both models on those same indices (paired): the interval is that of the difference, not of two
independent estimates. Seeded (numpy PCG64), vectorised: a (samples x n) index matrix per metric.

A metric is a statistic of per-example columns (`Stat`):
- mean:      mean(col)                                  (accuracy, F1, ROUGE-L, refusal flags)
- ratio:     scale * sum(num) / sum(den), exp() if asked (perplexity = exp(sum nll / sum tokens), tok/s, cost)
- gap:       |mean(a) - mean(b)|                        (counterfactual pairs: group a vs group b)
- quantile:  q-quantile of col                          (latency p50 / p95)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, TypedDict

import numpy as np

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Stat:
    name: str
    better: Literal["higher", "lower"]
    kind: Literal["mean", "ratio", "gap", "quantile"]
    cols: tuple[str, ...]
    q: float = 0.5
    scale: float = 1.0
    exp: bool = False
    compare: bool = True  # False: reported per model, no difference (a property of the data, e.g. context recall)

    def value(self, c: Columns, idx: np.ndarray | None = None) -> np.ndarray | float:
        """The statistic on rows `idx` ((samples, n) matrix -> one value per sample), or on all rows."""
        def col(name: str) -> np.ndarray:
            x = np.asarray(c[name], dtype=np.float64)
            return x if idx is None else x[idx]
        if self.kind == "mean":
            out = col(self.cols[0]).mean(axis=-1)
        elif self.kind == "ratio":
            num, den = col(self.cols[0]).sum(axis=-1), col(self.cols[1]).sum(axis=-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = self.scale * num / den
            if self.exp:
                out = np.exp(out)
        elif self.kind == "gap":
            out = np.abs(col(self.cols[0]).mean(axis=-1) - col(self.cols[1]).mean(axis=-1))
        else:
            out = np.quantile(col(self.cols[0]), self.q, axis=-1)
        return float(out) if idx is None else out


class Interval(TypedDict):
    candidate: float
    reference: float
    diff: float  # candidate - reference
    ci_low: float
    ci_high: float
    confidence: float
    better: str
    n: int


def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd) if np.isfinite(x) else float(x)


def paired_interval(stat: Stat, cand: Columns, ref: Columns, *, samples: int, seed: int,
                    confidence: float) -> Interval:
    """Percentile interval of stat(cand) - stat(ref) over `samples` paired resamples of the examples."""
    n = len(next(iter(cand.values())))
    if n == 0:
        raise ValueError(f"{stat.name}: no examples to bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    diffs = np.asarray(stat.value(cand, idx)) - np.asarray(stat.value(ref, idx))
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2
    lo, hi = (np.quantile(diffs, [alpha, 1 - alpha]) if len(diffs) else (float("nan"), float("nan")))
    c, r = stat.value(cand), stat.value(ref)
    return {"candidate": _r(c), "reference": _r(r), "diff": _r(c - r), "ci_low": _r(lo), "ci_high": _r(hi),
            "confidence": confidence, "better": stat.better, "n": int(n)}


def one_sample_interval(values: np.ndarray, *, samples: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile interval of mean(values) (the judge's preference rate)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return _r(lo), _r(hi)
