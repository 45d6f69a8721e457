"""Calibration of the drift decision: false alarm rate on same-distribution splits, power on injected shifts.

Pools are lists of texts with their vectors computed once; a scenario draws a reference and a current window of
`n` texts from them per split (seeded) and runs `detect_drift`. Used by tests/test_drift.py (small n) and
bench/bench_drift.py (the n=500 table).

- null: both windows from one pool, disjoint halves of a random 2n sample;
- topic shift: reference from instruction data, current from XQuAD text;
- length shift: the same instruction pool, current texts cut to `fraction` of their characters (at a word start);
- language shift: XQuAD English vs another XQuAD language, on disjoint paragraph/question ids.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipelines.monitoring.drift import DriftResult, DriftSettings, detect_drift
from pipelines.monitoring.windows import TextWindow, record_text


@dataclass
class Pool:
    name: str
    texts: list[str]
    ids: list[str]
    vectors: np.ndarray | None = None

    def take(self, idx: Sequence[int], name: str) -> TextWindow:
        idx = list(idx)
        return TextWindow(name=name, texts=[self.texts[i] for i in idx], kind="memory", records_read=len(idx),
                          vectors=None if self.vectors is None else self.vectors[idx],
                          ids=[self.ids[i] for i in idx])


def instruction_pool(paths: Sequence[str | Path], name: str = "instructions", which: str = "text",
                     max_chars: int | None = None) -> Pool:
    """GPTeacher-style JSON arrays (instruction, input, response) as corpus texts (prompt\\n\\nresponse) or
    prompts; `max_chars` drops longer records (the shipped sample was drawn among short responses)."""
    texts, ids = [], []
    seen = set()
    for path in paths:
        for i, rec in enumerate(json.loads(Path(path).read_text(encoding="utf-8"))):
            text = record_text(rec, which)  # type: ignore[arg-type]
            if not text or (max_chars and len(record_text(rec, "text") or "") > max_chars) or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            ids.append(f"{Path(path).stem}:{i}")
    return Pool(name, texts, ids)


def xquad_pool(path: str | Path, name: str | None = None, unit: str = "both") -> Pool:
    """XQuAD text units: context paragraphs (id `title#i`) and questions (their qas id); ids align across the
    languages' files (the same question has the same id in every language). unit: paragraphs | questions | both."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    texts, ids = [], []
    for article in data:
        for i, para in enumerate(article["paragraphs"]):
            if unit in ("paragraphs", "both"):
                texts.append(para["context"])
                ids.append(f"{article['title']}#{i}")
            if unit in ("questions", "both"):
                for qa in para["qas"]:
                    texts.append(qa["question"])
                    ids.append(qa["id"])
    return Pool(name or Path(path).stem, texts, ids)


def id_half(pool: Pool, half: int, salt: str = "drift-calibration") -> list[int]:
    """Indices of the pool's items whose id hashes into `half` (0 or 1): a split shared by aligned pools."""
    def h(i: str) -> int:
        return hashlib.sha256(f"{salt}:{i}".encode()).digest()[0] & 1
    return [k for k, i in enumerate(pool.ids) if h(i) == half]


def truncate(text: str, fraction: float) -> str:
    """The first `fraction` of the text's characters, cut back to a word start (at least one word)."""
    cut = max(1, int(len(text) * fraction))
    head = text[:cut]
    if cut < len(text) and not text[cut].isspace() and " " in head.strip():
        head = head[: head.rstrip().rfind(" ")]
    return head.rstrip() or text.split()[0]


def embed_pools(encoder: Any, *pools: Pool) -> None:
    """Fill each pool's vectors (one encoder call for all texts: the cache dedups across pools)."""
    texts = [t for p in pools for t in p.texts]
    vecs = encoder.vectors(texts)
    start = 0
    for p in pools:
        p.vectors = vecs[start:start + len(p.texts)]
        start += len(p.texts)


@dataclass
class Scenario:
    name: str
    kind: str  # null | shift
    draw: Callable[[np.random.Generator, int], tuple[TextWindow, TextWindow]]


def null_scenario(name: str, pool: Pool) -> Scenario:
    def draw(rng: np.random.Generator, n: int) -> tuple[TextWindow, TextWindow]:
        if 2 * n > len(pool.texts):
            raise ValueError(f"{name}: pool of {len(pool.texts)} texts is too small for two windows of {n}")
        idx = rng.choice(len(pool.texts), size=2 * n, replace=False)
        return pool.take(idx[:n], "reference"), pool.take(idx[n:], "current")
    return Scenario(name, "null", draw)


def shift_scenario(name: str, ref_pool: Pool, cur_pool: Pool, ref_idx: Sequence[int] | None = None,
                   cur_idx: Sequence[int] | None = None) -> Scenario:
    ref_idx = np.asarray(range(len(ref_pool.texts)) if ref_idx is None else ref_idx)
    cur_idx = np.asarray(range(len(cur_pool.texts)) if cur_idx is None else cur_idx)
    same = ref_pool is cur_pool

    def draw(rng: np.random.Generator, n: int) -> tuple[TextWindow, TextWindow]:
        if same:  # disjoint draws from one pool
            idx = rng.choice(ref_idx, size=2 * n, replace=False)
            return ref_pool.take(idx[:n], "reference"), cur_pool.take(idx[n:], "current")
        return (ref_pool.take(rng.choice(ref_idx, size=n, replace=False), "reference"),
                cur_pool.take(rng.choice(cur_idx, size=n, replace=False), "current"))
    return Scenario(name, "shift", draw)


def paired_shift_scenario(name: str, pool: Pool, shifted: Pool) -> Scenario:
    """Reference from `pool`, current = the shifted version (`shifted`, same order) of other items of `pool`."""
    def draw(rng: np.random.Generator, n: int) -> tuple[TextWindow, TextWindow]:
        idx = rng.choice(len(pool.texts), size=2 * n, replace=False)
        return pool.take(idx[:n], "reference"), shifted.take(idx[n:], "current")
    return Scenario(name, "shift", draw)


def run_scenario(scenario: Scenario, cfg: DriftSettings, n: int, splits: int, seed: int) -> dict[str, Any]:
    """Alarm rate over `splits` draws, and each test's own rate at the corrected threshold."""
    rng = np.random.default_rng(seed)
    results: list[DriftResult] = []
    for _ in range(splits):
        ref, cur = scenario.draw(rng, n)
        results.append(detect_drift(ref, cur, cfg))
    per_test = {t: round(float(np.mean([r["tests"][t]["drifted"] for r in results])), 4) for t in cfg.tests}
    pvals = {t: round(float(np.median([r["tests"][t]["p_value"] for r in results])), 6) for t in cfg.tests}
    return {"scenario": scenario.name, "kind": scenario.kind, "n": n, "splits": splits,
            "alarm_rate": round(float(np.mean([r["drifted"] for r in results])), 4),
            "alarms": int(sum(r["drifted"] for r in results)),
            "per_test_rate": per_test, "median_p_value": pvals,
            "median_seconds": round(float(np.median([r["seconds"] for r in results])), 3)}
