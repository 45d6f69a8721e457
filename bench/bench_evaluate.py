"""Benchmark of the Ray evaluate: actors vs one process, per-actor efficiency, and the stage's wall time.

    .venv/bin/python bench/bench_evaluate.py [--per-task 4] [--repeats 2] [--stage] [--before-rev 6b002bd]

Same examples everywhere (the demo's tasks from params.yaml, cut to `--per-task` records each), same blocks, the
candidate (models/candidate, or a smoke adapter when the demo has not run) and the base as reference:
- single process, 2 torch threads: `runner.run_local` (the same evaluator class, block after block);
- Ray Data, 1 actor x 1 thread, and 2 actors x 1 thread (`runner.run_ray`);
- 2 plain processes x 1 thread, no Ray: the same evaluator in two spawned processes that take the next block from
  one queue when free, as the actor pool does. It is the control for the per-actor efficiency: what two 1-thread
  workers get from this machine's two cores without Ray.
Figures: steady seconds (first block start -> last block end in the workers: throughput once models are loaded)
and wall seconds (start-up and model load included), examples/s, medians over `--repeats`. Ratio = single
process seconds / Ray seconds (>= 1.0: Ray at least as fast). Per-actor efficiency = throughput(2 actors) /
(2 x throughput(1 actor)). `--stage` also times the whole evaluate stage with the demo params, and
`--before-rev` the evaluate of that git revision (the single-process stage this one replaced) on its demo params.
Writes bench/results/evaluate.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _plain_worker(blocks, kwargs, barrier, todo, done) -> None:
    """One no-Ray worker: load the models, wait for the other worker, then take blocks until the queue is empty."""
    import numpy as np

    from pipelines.evaluation import runner

    evaluator = runner.ModelEvaluator(**kwargs)
    barrier.wait()
    while (i := todo.get()) is not None:
        b = blocks[i]
        out = evaluator({"task": np.asarray([b.task] * len(b.ids), dtype=object),
                         "id": np.asarray(b.ids, dtype=object), "record": np.asarray(b.records, dtype=object)})
        done.put([{k: out[k][j].item() if hasattr(out[k][j], "item") else out[k][j] for k in out}
                  for j in range(len(b.ids))])
    done.put(None)


def run_plain_pool(blocks, kwargs, procs: int):
    """`procs` spawned processes sharing one queue of blocks (longest first, as make_blocks orders them)."""
    import multiprocessing as mp

    from pipelines.evaluation import runner

    ctx = mp.get_context("spawn")
    todo, done, barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(procs + 1)
    for i in range(len(blocks)):
        todo.put(i)
    for _ in range(procs):
        todo.put(None)
    workers = [ctx.Process(target=_plain_worker, args=(blocks, kwargs, barrier, todo, done)) for _ in range(procs)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    barrier.wait()  # every worker has its models loaded
    rows, finished = [], 0
    while finished < procs:
        got = done.get()
        finished += got is None
        rows.extend(got or [])
    for w in workers:
        w.join()
    return runner._collect(rows)._replace(pipeline_seconds=time.perf_counter() - t0)


def _candidate(tmp: Path) -> str:
    cand = REPO / "models" / "candidate"
    if (cand / "adapter_config.json").exists():
        return str(cand)
    from pipelines.models.lm import make_smoke_adapter

    return str(make_smoke_adapter(REPO / "models" / "base", tmp / "candidate", steps=2))


def _examples(cfg, per_task: int, res):
    from pipelines.evaluation.tasks import FAMILIES, load_examples

    specs = [t.model_copy(update={"max_examples": min(per_task, t.max_examples or per_task)})
             for t in cfg.tasks if t.enabled]
    ex = {s.name: FAMILIES[s.type].prepare(load_examples(s), res) for s in specs}
    return specs, ex


def _stage_seconds(params_overrides: dict | None = None) -> dict:
    from pipelines.stages import evaluate
    from pipelines.stages.registry import shared_config, stage_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = stage_config("evaluate", metrics=f"{tmp}/m.json", report=f"{tmp}/r.html", plot=f"{tmp}/p.csv",
                           mlflow=False, **(params_overrides or {}))
        registry = shared_config("registry", tracking_uri=f"sqlite:///{tmp}/none.db")  # reference: the base
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate.run(cfg, engines=shared_config("engines"), registry=registry)
        wall = time.perf_counter() - t0
        m = json.loads(Path(cfg.metrics).read_text())
    return {"wall_s": round(wall, 1), "driver_cpu_s": round(time.process_time() - c0, 1),
            "examples": sum(m["n_examples"].values()), "ray": m["ray"]}


OLD_CONFIG = dict(base_model_dir="models/base", eval_path="data/splits/eval.parquet",
                  test_path="data/splits/test.parquet", max_eval_examples=16, max_generation_examples=8,
                  max_new_tokens=32, max_length=256, max_prompt_tokens=192, batch_size=8, report_examples=4)


def _before_seconds(rev: str, candidate: str) -> dict:
    """The evaluate stage of git revision `rev` (single process, base vs candidate, perplexity + ROUGE-L) with its
    demo params, in a fresh process (so its timing includes imports and the model load, like the stage's)."""
    show = lambda path: subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True,  # noqa: E731
                                       text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "old_evaluate.py").write_text(show("pipelines/stages/evaluate.py"))
        (Path(tmp) / "evaluate.html.j2").write_text(show("pipelines/templates/evaluate.html.j2"))
        script = f"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {str(REPO)!r})
spec = importlib.util.spec_from_file_location("old_evaluate", {tmp!r} + "/old_evaluate.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
import jinja2
env = jinja2.Environment(loader=jinja2.FileSystemLoader({tmp!r}), autoescape=True, undefined=jinja2.StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)
m.render = lambda name, **kw: env.get_template(name).render(**kw)  # that revision's own template
cfg = m.Config(**{OLD_CONFIG!r}, candidate_dir={candidate!r}, metrics={tmp!r} + "/m.json", report={tmp!r} + "/r.html")
m.run(cfg)
print(json.dumps({{"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time(), 1)}}))
"""
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stage", action="store_true", help="also time the whole stage with the demo params")
    ap.add_argument("--before-rev", default=None, help="git revision of the evaluate stage to compare with")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "evaluate.md"))
    args = ap.parse_args()

    from pipelines.engines.ray_engine import init_ray
    from pipelines.evaluation import runner
    from pipelines.evaluation.tasks import Resources
    from pipelines.stages.registry import shared_config, stage_config

    cfg = stage_config("evaluate")
    engines = shared_config("engines")
    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    candidate = _candidate(tmp)
    res = Resources()
    if any(t.type == "rag" and t.enabled for t in cfg.tasks):
        from pipelines.embeddings.retrieval import Retriever

        retriever = Retriever(cfg.rag.index_dir)
        res.retrieve = lambda qs: [[h.text for h in hits] for hits in  # noqa: E731
                                   retriever.search_batch(qs, cfg.rag.top_k, [cfg.rag.source])]
    specs, examples = _examples(cfg, args.per_task, res)
    blocks = runner.make_blocks(examples, cfg.batch_size, specs)
    n = sum(len(v) for v in examples.values())

    def kwargs(threads: int) -> dict:
        return runner.evaluator_kwargs(base_model_dir=cfg.base_model_dir, candidate_dir=candidate, champion_dir=None,
                                       specs=specs, threads=threads, batch_size=cfg.batch_size,
                                       max_prompt_tokens=cfg.max_prompt_tokens, max_length=cfg.max_length,
                                       use_gpu=False)

    t0 = time.perf_counter()
    init_ray(engines.ray)
    ray_init = time.perf_counter() - t0
    modes = {"single process, 2 threads": lambda: runner.run_local(blocks, kwargs(2)),
             "Ray, 1 actor x 1 thread": lambda: runner.run_ray(engines.ray, blocks, kwargs(1), actors=1, threads=1,
                                                               use_gpu=False),
             "Ray, 2 actors x 1 thread": lambda: runner.run_ray(engines.ray, blocks, kwargs(1), actors=2, threads=1,
                                                                use_gpu=False),
             "2 plain processes x 1 thread (no Ray)": lambda: run_plain_pool(blocks, kwargs(1), 2)}
    results: dict[str, dict[str, list[float]]] = {m: {"steady": [], "wall": []} for m in modes}
    outputs: dict[str, dict] = {}
    last: dict[str, runner.RunResult] = {}
    for r in range(args.repeats):
        for mode, fn in modes.items():
            out = fn()
            # run_local's steady time: its blocks' first start to last end, as in the actors
            results[mode]["steady"].append(out.steady_seconds)
            results[mode]["wall"].append(out.pipeline_seconds)
            outputs[mode] = out.outputs
            last[mode] = out
            print(f"repeat {r} {mode}: steady {out.steady_seconds:.1f}s wall {out.pipeline_seconds:.1f}s", flush=True)
    def content(out: dict) -> dict:  # what the models said / scored, without the latency task's timings
        return {t: {i: {v: {k: x for k, x in o.items() if k not in ("seconds", "device_seconds")}
                        for v, o in per.items()} for i, per in ex.items()} for t, ex in out.items()}
    same_ray = content(outputs["Ray, 1 actor x 1 thread"]) == content(outputs["Ray, 2 actors x 1 thread"])
    same_ray = same_ray and content(outputs["2 plain processes x 1 thread (no Ray)"]) == content(
        outputs["Ray, 1 actor x 1 thread"])
    same = all(content(outputs[m]) == content(outputs["single process, 2 threads"]) for m in modes)
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in results.items()}
    single, one, two, plain = (med[m] for m in modes)
    eff = (n / two["steady"]) / (2 * n / one["steady"])
    plain_eff = (n / plain["steady"]) / (2 * n / one["steady"])
    print(f"modes: {json.dumps(med)} same={same} eff={eff:.3f}", flush=True)
    stage = _stage_seconds() if args.stage else None
    print(f"stage: {stage}", flush=True)
    before = _before_seconds(args.before_rev, candidate) if args.before_rev else None
    print(f"before: {before}", flush=True)

    lines = ["# Evaluate on Ray: actors vs one process", "",
             f"`.venv/bin/python bench/bench_evaluate.py --per-task {args.per_task} --repeats {args.repeats}"
             f"{' --stage' if args.stage else ''}{' --before-rev ' + args.before_rev if args.before_rev else ''}`"
             f" on {platform.machine()}, {os.cpu_count()} CPUs (shared with other work: figures are medians of "
             f"{args.repeats}). Load average at the end: {os.getloadavg()[0]:.1f}.", "",
             f"Same {n} examples ({len(specs)} tasks x up to {args.per_task}: "
             f"{', '.join(f'{k} {len(v)}' for k, v in examples.items())}), {len(blocks)} blocks of <= "
             f"{cfg.batch_size}, candidate and base reference in every block; Ray init {ray_init:.1f} s (once). "
             f"Outputs (texts, log-likelihoods) identical, 1 vs 2 actors and the 2 plain processes: "
             f"{'yes' if same_ray else 'NO'}; all modes "
             f"(2 torch threads may round differently from 1): {'yes' if same else 'no'}.", "",
             "| mode | steady s | examples/s (steady) | wall s (start-up + model load incl.) | ratio vs single process (steady) | ratio (wall) |",
             "|---|---|---|---|---|---|"]
    for m in modes:
        lines.append(f"| {m} | {med[m]['steady']:.1f} | {n / med[m]['steady']:.2f} | {med[m]['wall']:.1f} | "
                     f"{single['steady'] / med[m]['steady']:.2f}x | {single['wall'] / med[m]['wall']:.2f}x |")
    lines += ["", f"- Ray 2 actors x 1 thread vs single process 2 threads (steady): "
                  f"**{single['steady'] / two['steady']:.2f}x** (target >= 1.0x); wall incl. start-up "
                  f"{single['wall'] / two['wall']:.2f}x.",
              f"- Per-actor efficiency, throughput(2 actors) / (2 x throughput(1 actor)): **{eff:.2f}** "
              "(target >= 0.9).",
              f"- Control, 2 plain processes (no Ray) against the same 1 actor: {plain_eff:.2f}; Ray's 2 actors reach "
              f"{plain['steady'] / two['steady']:.2f} of the no-Ray pool's throughput.", ""]
    # Scheduling diagnostics: the blocks in the order the pool takes them (longest-first by estimated cost), and the
    # summed in-actor block seconds per mode (a per-block slowdown with 2 actors is CPU contention, not balance).
    est: dict[str, float] = {}
    for b in blocks:
        est[b.task] = est.get(b.task, 0.0) + b.cost
    lines += ["## Block schedule", "", "Blocks are handed out costliest first (`Family.estimated_cost`). Per task, in "
              "that order: estimated cost and measured in-actor seconds (both models).", "",
              "| task | estimated cost | " + " | ".join(f"{m} s" for m in modes) + " |",
              "|---|---|" + "---|" * len(modes)]
    for task in dict.fromkeys(b.task for b in blocks):
        lines.append(f"| {task} | {est[task]:.0f} | " + " | ".join(
            f"{last[m].task_seconds.get(task, 0.0):.1f}" for m in modes) + " |")
    summed = {m: sum(last[m].task_seconds.values()) for m in modes}
    lines += ["", "Summed block seconds (last repeat): " + ", ".join(f"{m} {summed[m]:.1f}" for m in modes)
              + f". With 2 actors, a perfect balance would take {summed[list(modes)[2]] / 2:.1f} s steady.", ""]
    if stage or before:
        lines += ["## The evaluate stage with the demo params", "", "| version | what it evaluates | wall s |", "|---|---|---|"]
        if before:
            lines.append(f"| before (`{args.before_rev}`, single process) | perplexity (16) + ROUGE-L (8), base vs "
                         f"candidate | {before['wall_s']} (CPU {before['cpu_s']} s) |")
        if stage:
            lines.append(f"| after (Ray, {stage['ray']['actors']} actors x {stage['ray']['threads_per_actor']} "
                         f"thread) | {stage['examples']} examples over every enabled family, reference vs candidate, "
                         f"bootstrap | {stage['wall_s']} (Ray pipeline {stage['ray']['pipeline_seconds']} s, "
                         f"steady {stage['ray']['steady_seconds']} s) |")
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
