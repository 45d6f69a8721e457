"""evaluate: the candidate against its reference (the champion, or the base model when there is none), on the
same examples in the same run, on Ray.

1. Every enabled task of `evaluate.tasks` (a family of `pipelines.evaluation.tasks` + a data file) is read and
   checked before any model loads: a missing field, a choice index out of range, an empty set or an unknown task
   type fails with the file and line.
2. Driver-side inputs: retrieval for rag tasks (the versioned index, `pipelines.embeddings.retrieval`), the guard's
   toxicity detector (`evaluate.guard_dir`, `pipelines.security.detectors`) when configured, and the champion's
   adapter downloaded from its MLflow artifacts (`registry.alias`).
3. A Ray Data pipeline of `ray.actors` model-holding actors (`ray.threads_per_actor` CPUs each, a GPU each with
   `ray.use_gpu`) runs every block of examples through the reference and the candidate (pipelines/evaluation/
   runner.py); greedy decoding, fixed blocks: 1 or N actors give the same outputs.
4. Per task: metrics per model, and for each metric the paired bootstrap interval of candidate - reference
   (`evaluate.bootstrap`: seeded). Optional pairwise LLM judge (`evaluate.judge`, off by default).
5. Outputs (atomic): metrics JSON (headline `perplexity` / `rouge_l` of each model, flat `<task>.<metric>`,
   `comparisons` with intervals), the HTML report (per-task tables with intervals, worst regressions, latency and
   cost), a DVC plot of the differences, and the candidate's metrics on its MLflow finetune run.
The champion lives in the MLflow registry, outside DVC's view: after a promotion, `dvc repro -f evaluate`.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

from pydantic import Field

from pipelines.config import StageConfig, project_root
from pipelines.cost.prices import PriceTable
from pipelines.engines.config import EnginesConfig
from pipelines.errors import StageFailed
from pipelines.evaluation import compare, runner
from pipelines.evaluation.bootstrap import one_sample_interval
from pipelines.evaluation.judge import JudgeConfig, judge_pairs
from pipelines.evaluation.tasks import EvalDataError, Resources, TaskSpec, check_types, load_examples
from pipelines.evaluation.tracking import Reference, champion_adapter, log_candidate_metrics
from pipelines.io import write_json, write_text
from pipelines.models import lm
from pipelines.models.registry import RegistryConfig
from pipelines.reports import render

SECTION = "evaluate"
TEMPLATE = "evaluate.html.j2"
HEADLINE = {"perplexity": "perplexity", "generation": "rouge_l"}  # family -> metric kept under its bare name


class RayEval(StageConfig):
    actors: int = Field(ge=1)  # model-holding actors (each loads the base + adapters once)
    threads_per_actor: int = Field(ge=1)  # CPUs reserved per actor = its torch threads
    use_gpu: bool  # one GPU per actor


class RagEval(StageConfig):
    index_dir: str  # the embed stage's versioned index
    top_k: int = Field(ge=1)
    source: str | None  # only chunks of this source (null: all)


class Bootstrap(StageConfig):
    samples: int = Field(ge=100)
    seed: int
    confidence: float = Field(gt=0, lt=1)


class Config(StageConfig):
    base_model_dir: str
    candidate_dir: str
    tasks: list[TaskSpec]
    ray: RayEval
    batch_size: int = Field(ge=1)  # examples per block (one padded batch per model)
    max_length: int  # tokens per log-likelihood example (prompt cut in the middle, response kept)
    max_prompt_tokens: int  # generation prompts cut in the middle beyond this
    rag: RagEval
    guard_dir: str | None  # the guard's trained detectors (train_guard); null: no toxicity scores
    cost: PriceTable  # params.yaml `cost`, aliased (evaluate.cost: *prices)
    bootstrap: Bootstrap
    judge: JudgeConfig
    report_examples: int = Field(ge=0)  # worst regressions shown per task
    mlflow: bool  # the candidate's metrics on its finetune run (registry section)
    metrics: str
    report: str
    plot: str


class EvaluateReport(TypedDict):
    metrics: str
    report: str
    reference: str
    compared: int
    n_examples: dict[str, int]


def _load_detector(cfg: Config, needed: bool):
    if cfg.guard_dir is None or not Path(cfg.guard_dir).exists():
        if needed:
            raise StageFailed(f"evaluate: the toxicity task needs the guard's detectors at {cfg.guard_dir} "
                              "(run `dvc repro train_guard`, or disable the task)")
        return None
    try:
        from pipelines.security.detectors import load_detector  # issue 15's guard (floor 2)
    except ImportError:
        if needed:
            raise StageFailed("evaluate: the toxicity task needs pipelines.security.detectors") from None
        return None
    return load_detector(cfg.guard_dir, "toxicity")


def _retriever(cfg: Config):
    from pipelines.embeddings.retrieval import Retriever

    retriever = Retriever(cfg.rag.index_dir)
    sources = [cfg.rag.source] if cfg.rag.source else None

    def retrieve(questions: list[str]) -> list[list[str]]:
        return [[h.text for h in hits] for hits in retriever.search_batch(questions, cfg.rag.top_k, sources)]
    return retrieve


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def _verdict(iv: dict) -> str:
    better_up = iv["better"] == "higher"
    if iv["ci_low"] > 0:
        return "better" if better_up else "worse"
    if iv["ci_high"] < 0:
        return "worse" if better_up else "better"
    return "no clear difference"


def _report_html(metrics: dict, regressions: list[dict], judged: list[dict]) -> str:
    tasks = []
    for name, t in metrics["tasks"].items():
        rows = []
        for metric, ref_value in t["metrics"]["reference"].items():
            iv = t["comparisons"].get(metric)
            rows.append({"metric": metric, "reference": _cell(ref_value),
                         "candidate": _cell(t["metrics"]["candidate"][metric]),
                         "diff": _cell(iv["diff"]) if iv else "",
                         "ci": f"[{_cell(iv['ci_low'])}, {_cell(iv['ci_high'])}]" if iv else "(not compared)",
                         "verdict": _verdict(iv) if iv else "", "better": iv["better"] if iv else ""})
        tasks.append({"name": name, "type": t["type"], "n": t["n"], "path": t["path"], "rows": rows,
                      "regressions": [r for r in regressions if r["task"] == name]})
    ref = metrics["reference_model"]
    page = render(
        TEMPLATE,
        candidate_dir=metrics["candidate_dir"], candidate_sha256=metrics["candidate_sha256"][:12],
        base_model_dir=metrics["base_model_dir"],
        reference=(f"champion v{ref['version']}" if ref["kind"] == "champion" else "base model"),
        confidence=metrics["bootstrap"]["confidence"], samples=metrics["bootstrap"]["samples"],
        seed=metrics["bootstrap"]["seed"], tasks=tasks, ray=metrics["ray"],
        latency=[t for t in tasks if t["type"] == "latency"], judge=metrics.get("judge"), judged=judged[:20],
        seconds=metrics["seconds"],
    )
    return page + "\n"


def _plot_rows(comparisons: dict[str, dict]) -> str:
    lines = ["metric,diff,ci_low,ci_high"]
    lines += [f"{k},{v['diff']},{v['ci_low']},{v['ci_high']}" for k, v in comparisons.items()]
    return "\n".join(lines) + "\n"


def run(cfg: Config, *, engines: EnginesConfig, registry: RegistryConfig) -> EvaluateReport:
    started = time.perf_counter()
    # 1. every input checked before any model loads
    check_types(cfg.tasks, project_root() / "params.yaml")
    specs = [t for t in cfg.tasks if t.enabled]
    if not specs:
        raise EvalDataError("evaluate: no enabled task in evaluate.tasks")
    examples = {s.name: load_examples(s) for s in specs}
    if not (Path(cfg.candidate_dir) / "adapter_config.json").exists():
        raise FileNotFoundError(f"evaluate: no LoRA adapter in {cfg.candidate_dir} (run finetune)")
    if not (Path(cfg.base_model_dir) / "config.json").exists():
        raise FileNotFoundError(f"evaluate: no base model in {cfg.base_model_dir} (run prepare_base_model)")
    if cfg.judge.enabled and not (cfg.judge.base_url and cfg.judge.model):
        raise StageFailed("evaluate: judge.enabled needs judge.base_url and judge.model")

    # 2. driver-side inputs
    types = {s.type for s in specs}
    res = Resources(detector=_load_detector(cfg, "toxicity" in types),
                    price_per_hour=cfg.cost.price_per_gpu_hour if cfg.ray.use_gpu else cfg.cost.price_per_cpu_hour)
    if "rag" in types:
        res.retrieve = _retriever(cfg)
    from pipelines.evaluation.tasks import FAMILIES

    examples = {s.name: FAMILIES[s.type].prepare(examples[s.name], res) for s in specs}
    prepare_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="llmops-champion-") as tmp:
        champ = champion_adapter(registry, tmp)
        # 3. both models on the same examples, on Ray
        kwargs = runner.evaluator_kwargs(
            base_model_dir=cfg.base_model_dir, candidate_dir=cfg.candidate_dir, champion_dir=champ.adapter_dir,
            specs=specs, threads=cfg.ray.threads_per_actor, batch_size=cfg.batch_size,
            max_prompt_tokens=cfg.max_prompt_tokens, max_length=cfg.max_length, use_gpu=cfg.ray.use_gpu)
        result = runner.run_ray(engines.ray, runner.make_blocks(examples, cfg.batch_size, specs), kwargs,
                                actors=cfg.ray.actors, threads=cfg.ray.threads_per_actor, use_gpu=cfg.ray.use_gpu)

    # 4. metrics and paired intervals
    b = cfg.bootstrap
    tasks: dict[str, compare.TaskResult] = {}
    regressions: list[dict] = []
    for s in specs:
        tr, _, regs = compare.compare_task(s, examples[s.name], result.outputs.get(s.name, {}), res,
                                           samples=b.samples, seed=b.seed, confidence=b.confidence)
        tasks[s.name] = tr
        regressions += regs[: cfg.report_examples]
    comparisons = {f"{t}.{k}": iv for t, r in tasks.items() for k, iv in r["comparisons"].items()}
    models: dict[str, dict[str, Any]] = {}
    for m in (runner.REFERENCE, runner.CANDIDATE):
        flat = compare.flat(tasks, m)
        headline = {}
        for s in specs:
            key = HEADLINE.get(s.type)
            if key and key not in headline:
                headline[key] = tasks[s.name]["metrics"][m][key]
        models[m] = {**headline, **flat}

    judged: list[dict] = []
    judge_summary = None
    if cfg.judge.enabled:
        items = []
        for s in specs:
            if s.name in cfg.judge.tasks:
                for r in examples[s.name][: cfg.judge.max_examples]:
                    out = result.outputs[s.name][r["id"]]
                    items.append((s.name, r["id"], compare._prompt_of(r), compare._output_text(out["candidate"]),
                                  compare._output_text(out["reference"])))
        judged = list(judge_pairs(cfg.judge, items))
        if judged:
            import numpy as np

            scores = np.asarray([j["score"] for j in judged])
            lo, hi = one_sample_interval(scores, samples=b.samples, seed=b.seed, confidence=b.confidence)
            judge_summary = {"n": len(judged), "preference": round(float(scores.mean()), 4), "ci_low": lo,
                             "ci_high": hi, "wins": sum(j["outcome"] == "win" for j in judged),
                             "losses": sum(j["outcome"] == "loss" for j in judged),
                             "ties": sum(j["outcome"] == "tie" for j in judged), "model": cfg.judge.model}

    reference: Reference = champ.reference
    metrics: dict[str, Any] = {
        # headline numbers at the top level (DVC metrics, the maturity scorecard): the candidate's
        **{k: models[runner.CANDIDATE][k] for k in HEADLINE.values() if k in models[runner.CANDIDATE]},
        "candidate": models[runner.CANDIDATE],
        "reference": models[runner.REFERENCE],
        **({"base": models[runner.REFERENCE]} if reference["kind"] == "base" else {}),
        "reference_model": reference,
        "delta": {k: iv["diff"] for k, iv in comparisons.items()},
        "comparisons": comparisons,
        "tasks": tasks,
        "n_examples": {k: len(v) for k, v in examples.items()},
        "bootstrap": b.model_dump(),
        "judge": judge_summary,
        "ray": {"actors": cfg.ray.actors, "threads_per_actor": cfg.ray.threads_per_actor, "use_gpu": cfg.ray.use_gpu,
                "ray_init_seconds": round(result.ray_init_seconds, 2),
                "pipeline_seconds": round(result.pipeline_seconds, 2),
                "steady_seconds": round(result.steady_seconds, 2),
                "model_load_seconds": round(result.model_load_seconds, 2), "nodes": result.nodes,
                "model_seconds": result.variant_seconds, "task_seconds": result.task_seconds},
        "base_model_dir": cfg.base_model_dir,
        "candidate_dir": cfg.candidate_dir,
        "candidate_sha256": lm.dir_sha256(cfg.candidate_dir),
        "prepare_seconds": round(prepare_seconds, 2),
    }
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_text(cfg.report, _report_html(metrics, regressions, judged))
    write_text(cfg.plot, _plot_rows(comparisons))
    write_json(cfg.metrics, metrics)
    if cfg.mlflow:
        logged = {f"eval.{k}": v for k, v in models[runner.CANDIDATE].items()}
        logged.update({f"eval.diff.{k}": iv["diff"] for k, iv in comparisons.items()})
        logged.update({k: models[runner.CANDIDATE][k] for k in HEADLINE.values() if k in models[runner.CANDIDATE]})
        log_candidate_metrics(registry, cfg.candidate_dir, logged)
    return {"metrics": cfg.metrics, "report": cfg.report, "reference": reference["kind"],
            "compared": len(comparisons), "n_examples": metrics["n_examples"]}

