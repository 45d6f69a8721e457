"""train_guard: the guard's detectors. `source: shipped` (default, issue 33) installs the full-data detectors
committed in `shipped.dir` (pipelines/security/artifacts; sha256-checked against their manifest) into output_dir;
`source: rebuild` re-runs their recipe on `shared_root` (pipelines/security/ship.py: held out by source family,
then fitted on all) and writes them there; `source: retrain` is the recipe below.

Retrain: train the guard's detectors (prompt injection / jailbreak, toxicity, harmful compliance) on the
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


class ShippedParams(StageConfig):
    dir: str                     # the shipped detectors in the repository (pipelines/security/artifacts)
    caps: dict[str, int | None]  # rebuild: per input source (pipelines/security/sources.py), `default` for the rest
    judge_caps: dict[str, int | None]  # rebuild: per output-judge request/answer source
    heads: list[str]             # rebuild: candidates compared held out: logreg | mlp | mlp_torch
    max_chars: int               # rebuild: input texts clipped (head 60% + tail 40%) before chunking
    max_fpr: float               # rebuild: input threshold: held-out false blocks <= this on every benign category
    judge_max_fpr: float         # rebuild: output judge threshold: held-out false alarm <= this


class Config(StageConfig):
    source: Literal["shipped", "retrain", "rebuild"]
    shipped: ShippedParams
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
    if cfg.source == "shipped":
        return _install_shipped(cfg, started)
    if cfg.source == "rebuild":
        return _rebuild_shipped(cfg, started)
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


def _install_shipped(cfg: Config, started: float) -> TrainGuardReport:
    """source: shipped: the repository's detectors (full public data, pipelines/security/artifacts) into
    output_dir, their held-out figures into the metrics and report."""
    from pipelines.security import ship

    if not (Path(cfg.shipped.dir) / "manifest.json").exists():
        raise StageFailed(f"train_guard: no shipped detectors in {cfg.shipped.dir} (manifest.json); set "
                          "train_guard.source: retrain (sample) or rebuild (../shared/data)")
    try:
        manifest = ship.install(cfg.shipped.dir, cfg.output_dir)
    except ValueError as e:
        raise StageFailed(str(e)) from e
    return _shipped_outputs(cfg, manifest, started, f"shipped detectors {manifest['version']} ({cfg.shipped.dir})")


def _rebuild_shipped(cfg: Config, started: float) -> TrainGuardReport:
    """source: rebuild: the shipped recipe on ../shared/data (shared_root), written to shipped.dir, then installed."""
    from pipelines.embeddings.encoder import resolve_model_dir
    from pipelines.security import ship
    from pipelines.security.features import Encoder

    if not cfg.shared_root or not (Path(cfg.shared_root) / "security").is_dir():
        raise StageFailed(f"train_guard: source rebuild needs the public datasets (shared_root {cfg.shared_root!r} "
                          "has no security/); a clone without them uses source: shipped")
    if cfg.encoder_quantization:
        raise StageFailed("train_guard: the shipped detectors are fp32-MiniLM heads (served through ONNX); "
                          "source rebuild refuses encoder_quantization int8")
    enc = Encoder(resolve_model_dir(cfg.model_package, cfg.model_path), threads=cfg.threads, cache_dir=cfg.cache_dir)
    s = cfg.shipped
    ship.rebuild(cfg.shared_root, s.dir, enc, caps=s.caps, judge_caps=s.judge_caps, heads=s.heads, max_fpr=s.max_fpr,
                 max_chars=s.max_chars,
                 judge_max_fpr=s.judge_max_fpr, seed=cfg.seed, sample_root=cfg.sample_root,
                 encoder_meta={"model_package": cfg.model_package, "model_path": cfg.model_path, "quantization": None})
    manifest = ship.install(s.dir, cfg.output_dir)
    return _shipped_outputs(cfg, manifest, started, f"rebuilt shipped detectors {manifest['version']} from "
                                                    f"{cfg.shared_root}")


def _shipped_outputs(cfg: Config, manifest: dict, started: float, desc: str) -> TrainGuardReport:
    held = json.loads((Path(cfg.output_dir) / "heldout.json").read_text())
    detectors = {}
    for name in ("injection", "toxicity", "harmful_compliance"):
        meta = json.loads((Path(cfg.output_dir) / name / "meta.json").read_text())
        detectors[name] = {"head": meta["head"], "threshold": meta["threshold"]}
    detectors["injection"]["heldout_targets"] = {t["check"]: t["value"] for t in held["injection"]["targets"]}
    detectors["harmful_compliance"]["heldout"] = {k: held["harmful_compliance"]["heldout"][k]
                                                  for k in ("recall", "false_alarm", "auroc")}
    detectors["toxicity"]["test"] = held["toxicity"]["test"]
    seconds = round(time.perf_counter() - started, 2)
    write_json(cfg.metrics, {"data": desc, "version": manifest["version"], "detectors": detectors, "seconds": seconds})
    write_text(cfg.report, (Path(cfg.output_dir) / "MODEL_CARD.md").read_text())
    return {"output_dir": cfg.output_dir, "metrics": cfg.metrics, "detectors": detectors, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    """`python -m pipelines.stages.train_guard [--shared ../shared/data]`: train_guard with source rebuild (params.yaml
    otherwise), i.e. the shipped detectors re-made from the public data, written to train_guard.shipped.dir."""
    import argparse

    from pipelines.config import config_from_params

    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--install", default=None, help="output_dir/metrics/report under this directory instead of "
                                                     "params.yaml's (models/guard, metrics/guard.json, reports/guard.md)")
    a = ap.parse_args(argv)
    where = {}
    if a.install:
        d = Path(a.install)
        where = {"output_dir": str(d / "models"), "metrics": str(d / "guard.json"), "report": str(d / "guard.md")}
    rep = run(config_from_params(SECTION, Config, {"source": "rebuild", "shared_root": a.shared, **where}))
    print(json.dumps(rep["detectors"], indent=1))


if __name__ == "__main__":
    main()
