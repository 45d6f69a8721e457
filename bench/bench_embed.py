"""Embedding throughput: the embed stage's Ray Data path vs a bare `SentenceTransformer.encode`, side by side,
plus an optional int8 (torch dynamic quantization) path with the retrieval quality it keeps.

Texts: the chunks of the shipped XQuAD paragraphs (data/sample/raw/xquad_en_paragraphs.jsonl) cut with
params.yaml's `embed.chunking`, the very texts the stage embeds for them; throughput is timed on the first
--limit of them (a 2-core CPU encodes ~5-10 chunks/s), retrieval quality on all of them.
(a) bare: one process, the model loaded once, `encode(texts, batch_size=b)` for b in --batch-sizes (one pass each
    after a warm-up), then --runs timed passes at the best b. torch uses every core (its default).
(b) stage: `embed_texts_ray` from pipelines/embeddings/vectors.py, as the embed stage runs it (Ray Data
    map_batches over model-holding actors), with each Ray layout in --ray-layouts (`concurrency x num_cpus`, the
    same total threads as (a)); each pass includes creating the actors and loading their model copies, as every
    stage run does; `ray.init` is timed once, apart.
(a) and (b) passes are interleaved so that load from other processes on a shared machine hits both alike.
(c) int8: `torch.ao.quantization.quantize_dynamic` on the Linear layers, --runs passes at the best b; recall@1/5 and
    MRR of the XQuAD questions (evaluate_retrieval's scoring, --questions sample) with fp32 and with int8 vectors.
Writes bench/results/embed.json.

    .venv/bin/python bench/bench_embed.py [--runs 3] [--questions 300]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "embed.json"
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def texts_and_docs(params: dict):
    from pipelines.embeddings.chunking import chunk_texts, load_tokenizer
    from pipelines.embeddings.encoder import resolve_model_dir

    cfg = params["embed"]
    model_dir = resolve_model_dir(cfg["model_package"], cfg["model_path"])
    paras = [json.loads(line) for line in (REPO / "data/sample/raw/xquad_en_paragraphs.jsonl").read_text().splitlines()]
    chunks = chunk_texts(load_tokenizer(model_dir), [p["text"] for p in paras], cfg["chunking"]["max_tokens"],
                         cfg["chunking"]["overlap_tokens"])
    rows = [(p["id"], c.text, c.n_tokens) for p, cs in zip(paras, chunks) for c in cs]
    return model_dir, paras, rows


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class MemoryRetriever:
    """Just enough of pipelines.embeddings.retrieval.Retriever for retrieval_eval.score: vectors in memory."""

    def __init__(self, model, doc_ids, vectors):
        import faiss

        from pipelines.embeddings.retrieval import Hit

        self.model, self.doc_ids, self.hit = model, doc_ids, Hit
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.sources = ["xquad_en"] * len(doc_ids)

    def search_batch(self, queries, k, sources=None, batch_size=64):
        from pipelines.embeddings.encoder import encode

        scores, rows = self.index.search(encode(self.model, list(queries), batch_size), min(k, self.index.ntotal))
        return [[self.hit(str(r), self.doc_ids[r], "xquad_en", float(s), "", 0, 0) for r, s in zip(row, sc)]
                for row, sc in zip(rows, scores)]


def retrieval_metrics(model, paras, rows, n_questions: int, batch_size: int) -> dict:
    """Embed every chunk of the 240 paragraphs with `model`, then evaluate_retrieval's metrics on the questions."""
    import pandas as pd

    from pipelines.embeddings.encoder import encode

    from pipelines.embeddings import retrieval_eval as er
    from pipelines.stages.registry import stage_config

    cfg = stage_config("evaluate_retrieval", max_questions=n_questions)
    questions = er.sample_questions(er.load_questions(REPO / cfg.questions_path), cfg.max_questions, cfg.seed)
    corpus = pd.DataFrame({"doc_id": [p["id"] for p in paras], "text": [p["text"] for p in paras],
                           "title": [p["title"] for p in paras]})
    mapping = er.map_paragraphs(questions, corpus, cfg.min_fuzzy_ratio)
    vectors = encode(model, [r[1] for r in rows], batch_size)
    res = er.score(MemoryRetriever(model, [r[0] for r in rows], vectors), questions, mapping.mapped,
                   source=cfg.source, ks=cfg.ks, fetch_k=cfg.fetch_k, batch_size=cfg.batch_size)
    return {"questions": res.questions, "unmapped": mapping.counts["unmapped"],
            "recall_at_1": round(res.recall_curve[1], 4), "recall_at_5": round(res.recall_curve[5], 4),
            "mrr": round(res.mrr, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-sizes", default="16,32,64,128")
    ap.add_argument("--ray-layouts", default="1x2,2x1", help="concurrency x num_cpus per actor")
    ap.add_argument("--limit", type=int, default=160, help="time the first N chunks (0: all 444)")
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args()

    import torch

    from pipelines.config import load_params
    from pipelines.embeddings.encoder import encode, load_model
    from pipelines.embeddings.vectors import embed_texts_ray
    from pipelines.engines.ray_engine import init_ray
    from pipelines.stages.registry import shared_config

    params = load_params(REPO / "params.yaml")
    model_dir, paras, rows = texts_and_docs(params)
    timed_rows = rows[:args.limit] if args.limit else rows
    texts, tokens = [r[1] for r in timed_rows], [r[2] for r in timed_rows]
    keys = [str(i) for i in range(len(texts))]
    n = len(texts)
    print(f"{n} texts, {sum(tokens)} word pieces, torch threads {torch.get_num_threads()}", flush=True)

    model = load_model(model_dir)
    encode(model, texts[:32], 32)  # warm-up
    sweep = {}
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        sweep[b] = round(n / timed(lambda: encode(model, texts, b))[0], 2)
        print(f"bare encode batch {b}: {sweep[b]} texts/s", flush=True)
    best_b = max(sweep, key=sweep.get)

    ray_config = shared_config("engines", params, ray={"num_cpus": int(os.cpu_count() or 2)}).ray
    ray_seconds, ray = timed(lambda: init_ray(ray_config))
    layouts = [tuple(int(v) for v in lay.split("x")) for lay in args.ray_layouts.split(",")]
    bare_runs: list[float] = []
    ray_runs: dict[str, list[float]] = {f"{c}x{p}": [] for c, p in layouts}
    steady_runs: dict[str, list[float]] = {f"{c}x{p}": [] for c, p in layouts}
    fp32 = None
    for _ in range(args.runs):
        secs, fp32 = timed(lambda: encode(model, texts, best_b))
        bare_runs.append(n / secs)
        for c, p in layouts:
            secs, out = timed(lambda: embed_texts_ray(ray, model_dir, keys, texts, tokens, batch_size=best_b,
                                                      concurrency=c, num_cpus=p))
            ray_runs[f"{c}x{p}"].append(n / secs)
            steady_runs[f"{c}x{p}"].append(n / out.steady_seconds)
            stage_vecs = np.stack([out.vectors[k] for k in keys])
        print(f"bare {bare_runs[-1]:.2f} texts/s; ray (wall, steady) " + ", ".join(
            f"{k}: {v[-1]:.2f}, {steady_runs[k][-1]:.2f}" for k, v in ray_runs.items()), flush=True)
    bare_median = statistics.median(bare_runs)
    ray_medians = {k: statistics.median(v) for k, v in ray_runs.items()}
    steady_medians = {k: statistics.median(v) for k, v in steady_runs.items()}
    best_layout = max(steady_medians, key=steady_medians.get)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other processes)",
        "torch": torch.__version__, "torch_threads_bare": torch.get_num_threads(),
        "texts": n, "word_pieces": int(sum(tokens)),
        "texts_from": f"first {n} of the {len(rows)} chunks of the 240 xquad_en paragraphs, params.yaml "
                      f"embed.chunking {params['embed']['chunking']}",
        "runs": args.runs,
        "bare_batch_sweep_texts_per_s": sweep,
        "bare_best_batch_size": best_b,
        "bare_texts_per_s_median": round(bare_median, 2),
        "bare_texts_per_s_all": [round(v, 2) for v in bare_runs],
        "ray_init_seconds": round(ray_seconds, 2),
        "stage_ray_texts_per_s_median": {k: round(v, 2) for k, v in ray_medians.items()},
        "stage_ray_texts_per_s_all": {k: [round(x, 2) for x in v] for k, v in ray_runs.items()},
        "stage_ray_steady_texts_per_s_median": {k: round(v, 2) for k, v in steady_medians.items()},
        "stage_ray_steady_texts_per_s_all": {k: [round(x, 2) for x in v] for k, v in steady_runs.items()},
        "stage_best_layout": best_layout,
        "ratio_stage_steady_over_bare": {k: round(v / bare_median, 3) for k, v in steady_medians.items()},
        "ratio_stage_wall_over_bare": {k: round(v / bare_median, 3) for k, v in ray_medians.items()},
        "note": "wall: the whole Ray Data pass incl. starting the actor processes (import torch + "
                "sentence-transformers) and loading the model, paid once per stage run; steady: first batch "
                "start to last batch end in the actors. The machine is shared (load average >> cores), so "
                "passes are interleaved and medians reported.",
        "target_ratio": 0.9,
        "stage_vs_bare_max_abs_diff": float(np.abs(stage_vecs - fp32).max()),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")

    result["retrieval_fp32"] = retrieval_metrics(model, paras, rows, args.questions, best_b)
    print("fp32 retrieval", result["retrieval_fp32"], flush=True)
    if not args.no_int8:
        qmodel = torch.ao.quantization.quantize_dynamic(load_model(model_dir), {torch.nn.Linear}, dtype=torch.qint8)
        encode(qmodel, texts[:32], 32)
        q_runs, q_vecs = [], None
        for _ in range(args.runs):
            secs, q_vecs = timed(lambda: encode(qmodel, texts, best_b))
            q_runs.append(n / secs)
        cos = (q_vecs * fp32).sum(axis=1)
        result["int8_dynamic"] = {
            "method": "torch.ao.quantization.quantize_dynamic(Linear -> qint8), fbgemm, CPU",
            "texts_per_s_median": round(statistics.median(q_runs), 2),
            "texts_per_s_all": [round(v, 2) for v in q_runs],
            "speedup_vs_bare_fp32": round(statistics.median(q_runs) / bare_median, 3),
            "cosine_to_fp32_mean": round(float(cos.mean()), 4), "cosine_to_fp32_min": round(float(cos.min()), 4),
            "retrieval": retrieval_metrics(qmodel, paras, rows, args.questions, best_b),
        }
        print("int8", result["int8_dynamic"], flush=True)
    result["onnx"] = "not measured: no ONNX runtime / exporter (optimum, onnxruntime) in the environment"
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
