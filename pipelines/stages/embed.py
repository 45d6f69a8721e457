"""embed: token-aware chunks of every curated document, all-MiniLM-L6-v2 vectors on Ray Data, a FAISS index.

1. The driver reads the corpus and cuts each document into chunks of at most `chunking.max_tokens` word pieces of
   the model's own tokenizer, with `chunking.overlap_tokens` shared between neighbours (pipelines/embeddings/
   chunking.py, corpus_chunks.py; the Rust tokenizer chunks the 840-document sample in well under a second).
2. Each chunk's content key is sha256(model fingerprint + chunk text). Keys found in the embedding cache
   (`cache_dir`, outside DVC's outputs: see pipelines/embeddings/cache.py) are reused; only the misses go through
   Ray Data: `map_batches` with a pool of `concurrency` actors that each hold the model (pipelines/embeddings/
   vectors.py). With no misses, Ray is not started at all.
3. The output directory is written atomically: chunks.parquet (chunk_id, doc_id, source, ordinal, start, end,
   n_tokens, text, vector) sorted by (doc_id, ordinal), the FAISS index in the same row order, index_ids.json and
   manifest.json. Same inputs -> same bytes (a rerun reads the cached float32 vectors).
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Literal, TypedDict

from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.embeddings.cache import EmbeddingCache, model_fingerprint
from pipelines.embeddings.chunking import load_tokenizer
from pipelines.embeddings.corpus_chunks import check_fits_model, chunk_corpus, read_documents
from pipelines.embeddings.encoder import resolve_model_dir
from pipelines.embeddings.index import write_index_dir
from pipelines.embeddings.vectors import chunk_vectors
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_dir, write_json

SECTION = "embed"


class Chunking(StageConfig):
    max_tokens: int = Field(ge=8)  # word pieces per chunk, without [CLS]/[SEP]
    overlap_tokens: int = Field(ge=0)  # pieces shared by consecutive chunks (snapped to word starts)

    @model_validator(mode="after")
    def _overlap_below_max(self) -> "Chunking":
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


class Config(StageConfig):
    input_dir: str
    model_package: str
    model_path: str | None  # a sentence-transformers directory instead of the package's model
    output_dir: str
    chunking: Chunking
    index: Literal["flat", "hnsw"]
    hnsw_m: int = Field(ge=4)
    cache_dir: str | None  # null: no cache, every chunk is embedded
    batch_size: int = Field(ge=1)  # rows per Ray Data batch handed to an actor
    concurrency: int = Field(ge=1)  # model actors (each loads its own copy of the model)
    num_cpus: float = Field(gt=0)  # CPUs reserved per actor; torch uses as many threads
    metrics: str


class Report(TypedDict):
    """metrics/embed.json."""

    documents: int
    chunks_total: int
    chunks_embedded: int  # unique chunk texts sent through Ray Data this run
    chunks_reused: int  # chunks whose vector came from the cache
    chunks_per_doc: float
    count: int  # rows of chunks.parquet (= vectors in the index), for `llmops data versions`
    out_by_source: dict[str, int]  # chunks per source
    dim: int
    chunk_seconds: float
    ray_init_seconds: float
    embed_seconds: float  # Ray Data pipeline incl. actor start and model load
    chunks_per_s: float | None
    # first batch start -> last batch end in the actors: embed_seconds minus actor start-up and model load
    embed_steady_seconds: float
    concurrency: int
    batch_size: int
    index: str


def run(cfg: Config, *, engines: EnginesConfig) -> Report:
    started = time.perf_counter()
    model_dir = resolve_model_dir(cfg.model_package, cfg.model_path)
    check_fits_model(model_dir, cfg.chunking.max_tokens)
    fingerprint = model_fingerprint(model_dir)
    df = read_documents(cfg.input_dir)
    cols = chunk_corpus(df, load_tokenizer(model_dir), cfg.chunking.max_tokens, cfg.chunking.overlap_tokens,
                        fingerprint)
    chunk_seconds = time.perf_counter() - started

    cache = EmbeddingCache(cfg.cache_dir, fingerprint) if cfg.cache_dir else None
    result = chunk_vectors(cols["key"], cols["text"], cols["n_tokens"], cache=cache, model_dir=model_dir,
                           ray_config=engines.ray, batch_size=cfg.batch_size, concurrency=cfg.concurrency,
                           num_cpus=cfg.num_cpus)
    vectors = result.vectors
    n_chunks = len(cols["chunk_id"])
    manifest = {
        "model_package": None if cfg.model_path else cfg.model_package,
        "model_path": cfg.model_path,
        "model_fingerprint": fingerprint,
        "dim": int(vectors.shape[1]),
        "unit": "chunk",
        "chunking": cfg.chunking.model_dump(),
        "index": cfg.index,
        "metric": "inner_product_on_unit_vectors",
        "documents": int(len(df)),
        "chunks": n_chunks,
        "sources": {s: int(n) for s, n in sorted(df["source"].value_counts().items())},
    }
    with atomic_dir(cfg.output_dir) as out:
        write_index_dir(out, {k: v for k, v in cols.items() if k != "key"}, vectors, manifest, cfg.index,
                        cfg.hnsw_m)
    report: Report = {
        "documents": int(len(df)),
        "chunks_total": n_chunks,
        "chunks_embedded": result.embedded,
        "chunks_reused": result.reused,
        "chunks_per_doc": round(n_chunks / len(df), 3),
        "count": n_chunks,
        "out_by_source": {s: int(n) for s, n in sorted(Counter(cols["source"]).items())},
        "dim": int(vectors.shape[1]),
        "chunk_seconds": round(chunk_seconds, 2),
        "ray_init_seconds": round(result.ray_init_seconds, 2),
        "embed_seconds": round(result.embed_seconds, 2),
        "chunks_per_s": round(result.embedded / result.embed_seconds, 1) if result.embed_seconds else None,
        "embed_steady_seconds": round(result.steady_seconds, 2),
        "concurrency": cfg.concurrency,
        "batch_size": cfg.batch_size,
        "index": cfg.index,
    }
    write_json(cfg.metrics, report)
    return report
