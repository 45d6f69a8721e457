"""train_guard: train the guard's detectors (prompt injection / jailbreak, toxicity, harmful compliance) on the
security and toxicity datasets, each split by source, and write `models/guard/<name>/` (model.npz, meta.json,
card.md), metrics/guard.json and a markdown report.

Data: the shipped sample (`sample_root`, default `data/sample`) or, with `shared_root` set (e.g. `../shared/data`),
the full public datasets (`pipelines.security.datasets.build` with `caps`). Features are MiniLM embeddings of the
normalized text plus lexical cues; each detector's head is chosen among `heads` on the validation split and its
threshold set there (`max_fpr` for injection: most recall with at most that false-positive rate on benign prompts;
`f1` otherwise). Embeddings are cached by content in `cache_dir` (the embed stage's cache), so a rerun is fast.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, TypedDict

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import write_json, write_text

SECTION = "train_guard"


class DetectorParams(StageConfig):
    heads: list[str]            # candidates compared on validation: logreg | mlp
    threshold_rule: str         # max_fpr | f1
    max_fpr: float | None       # max_fpr rule: FPR budget on validation negatives


class Config(StageConfig):
    sample_root: str
    shared_root: str | None
    caps: dict[str, int | None]
    max_chars: int | None
    over_refusal_path: str
    model_package: str
    model_path: str | None
    cache_dir: str | None
    encoder_quantization: Literal["int8"] | None
    threads: int
    seed: int
    detectors: dict[str, DetectorParams]
    output_dir: str
    metrics: str
    report: str


class TrainGuardReport(TypedDict):
    output_dir: str
    metrics: str
    detectors: dict[str, dict]
    seconds: float


def run(cfg: Config) -> TrainGuardReport:
    from pipelines.embeddings.encoder import resolve_model_dir
    from pipelines.security import datasets, training
    from pipelines.security.detectors import KINDS
    from pipelines.security.features import Encoder

    started = time.perf_counter()
    unknown = set(cfg.detectors) - set(KINDS)
    if unknown:
        raise StageFailed(f"train_guard: unknown detectors {sorted(unknown)}; known: {sorted(KINDS)}")
    if cfg.shared_root:
        data = datasets.build(cfg.shared_root, cfg.caps, cfg.max_chars, seed=cfg.seed)
        data_desc = f"full public datasets under {cfg.shared_root} (caps {cfg.caps})"
    else:
        data = datasets.load_sample(cfg.sample_root)
        data_desc = f"shipped sample under {cfg.sample_root} (permissive licences only)"
    over = [json.loads(l)["prompt"] for l in Path(cfg.over_refusal_path).read_text().splitlines() if l.strip()]
    model_dir = resolve_model_dir(cfg.model_package, cfg.model_path)
    enc = Encoder(model_dir, threads=cfg.threads, cache_dir=cfg.cache_dir, quantization=cfg.encoder_quantization)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, p in cfg.detectors.items():
        try:
            res = training.train_detector(
                name, data[name], enc, heads=p.heads, threshold_rule=p.threshold_rule, max_fpr=p.max_fpr,
                seed=cfg.seed, extra_negatives={"over_refusal": over} if name == "injection" else None)
        except ValueError as e:
            raise StageFailed(str(e)) from e
        training.save(res, out, {"model_package": cfg.model_package, "model_path": cfg.model_path,
                                 "quantization": cfg.encoder_quantization}, data_desc)
        results[name] = res
    seconds = time.perf_counter() - started
    metrics = {
        "data": data_desc,
        "detectors": {n: training.summary_row(r) for n, r in results.items()},
        "details": {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()},
        "seconds": round(seconds, 2),
    }
    write_json(cfg.metrics, metrics)
    write_text(cfg.report, training.report_markdown(results, seconds, data_desc))
    return {"output_dir": cfg.output_dir, "metrics": cfg.metrics, "detectors": metrics["detectors"],
            "seconds": metrics["seconds"]}
