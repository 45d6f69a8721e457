"""A vector for every chunk: from the embedding cache where present, else embedded on Ray Data.

Only the misses go through Ray Data: `map_batches` with a fixed pool of `concurrency` actors that each hold the
model (`Embedder`). Misses are sorted by token count and cut into blocks of `batch_size` rows, so batches pad little
and spread over actors. Identical chunk texts are embedded once. With no misses, Ray is not started at all.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipelines.config import absolute_path
from pipelines.embeddings.cache import EmbeddingCache
from pipelines.embeddings.encoder import Embedder
from pipelines.engines.config import RayConfig


class RayEmbedding(NamedTuple):
    vectors: dict[str, np.ndarray]  # key -> float32 vector
    # first batch start to last batch end in the actors: the pipeline's throughput once the actors are up (the
    # rest of the wall time is actor start-up and model load)
    steady_seconds: float


class ChunkVectors(NamedTuple):
    vectors: np.ndarray  # float32, one row per key, in the order of the keys asked for
    embedded: int  # unique chunk texts sent through Ray Data
    reused: int  # chunks whose vector came from the cache
    ray_init_seconds: float
    embed_seconds: float  # Ray Data pipeline incl. actor start and model load
    steady_seconds: float


def embed_texts_ray(ray: Any, model_dir: str | Path, keys: list[str], texts: list[str], n_tokens: list[int], *,
                    batch_size: int, concurrency: int, num_cpus: float) -> RayEmbedding:
    """Embed (key, text) pairs with Ray Data map_batches over `concurrency` model-holding actors of `num_cpus`
    CPUs each (torch uses as many threads)."""
    import pyarrow as pa

    order = np.argsort(np.asarray(n_tokens), kind="stable")  # similar lengths per batch: little padding
    table = pa.table({"key": pa.array([keys[i] for i in order], pa.string()),
                      "text": pa.array([texts[i] for i in order], pa.string())})
    # One block per batch: Ray Data hands blocks to actors, so a single block would keep one actor busy.
    blocks = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model_dir": absolute_path(str(model_dir)),  # the actors may run in another working directory
            "threads": max(1, int(num_cpus)),
            "encode_batch_size": batch_size,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),  # fixed pool (`concurrency=` is deprecated)
        num_cpus=num_cpus,
    )
    out: dict[str, np.ndarray] = {}
    first, last = float("inf"), 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in zip(batch["key"], batch["vector"]):
            out[str(k)] = np.asarray(v, dtype=np.float32)
        first, last = min(first, float(batch["_t_start"].min())), max(last, float(batch["_t_end"].max()))
    missing = set(keys) - out.keys()
    if missing:
        raise RuntimeError(f"embed: Ray Data returned no vector for {len(missing)} chunks")
    return RayEmbedding(out, max(0.0, last - first))


def chunk_vectors(keys: list[str], texts: list[str], n_tokens: list[int], *, cache: EmbeddingCache | None,
                  model_dir: str | Path, ray_config: RayConfig, batch_size: int, concurrency: int,
                  num_cpus: float) -> ChunkVectors:
    """The vector of every (key, text): cached ones reused, the misses embedded on Ray Data and added to the cache."""
    found = cache.lookup(keys) if cache else {}
    misses: dict[str, tuple[str, int]] = {}  # unique texts not in the cache (identical chunks embed once)
    for key, text, n in zip(keys, texts, n_tokens):
        if key not in found and key not in misses:
            misses[key] = (text, n)
    ray_seconds = embed_seconds = steady_seconds = 0.0
    if misses:
        from pipelines.engines.ray_engine import init_ray

        t0 = time.perf_counter()
        ray = init_ray(ray_config)
        ray_seconds = time.perf_counter() - t0
        miss_keys = list(misses)
        t0 = time.perf_counter()
        fresh = embed_texts_ray(ray, model_dir, miss_keys, [misses[k][0] for k in miss_keys],
                                [misses[k][1] for k in miss_keys], batch_size=batch_size, concurrency=concurrency,
                                num_cpus=num_cpus)
        embed_seconds = time.perf_counter() - t0
        steady_seconds = fresh.steady_seconds
        if cache:
            cache.add(miss_keys, np.stack([fresh.vectors[k] for k in miss_keys]))
        found.update(fresh.vectors)

    vectors = np.ascontiguousarray(np.stack([found[k] for k in keys]), dtype=np.float32)
    reused = sum(1 for k in keys if k not in misses)
    return ChunkVectors(vectors, len(misses), reused, ray_seconds, embed_seconds, steady_seconds)
