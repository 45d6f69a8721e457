"""The embed stage's output directory: chunks.parquet, index.faiss, index_ids.json and manifest.json.

Row i of chunks.parquet, vector i of the FAISS index and entry i of index_ids.json are the same chunk.

Why FAISS: the reference library for dense vector search (Meta, MIT licence, CPU wheels on PyPI, no server), with
exact and approximate indexes behind one API, and ID selectors for filtered search. The default `flat` index
(IndexFlatIP on unit vectors = exact cosine) needs no training and no tuning and is exact, which is what a measured
retrieval metric needs; at this corpus size (thousands of chunks) a query is a sub-millisecond scan. Past about a
million chunks, or when query latency matters more than the last point of recall, switch to `index: hnsw`
(IndexHNSWFlat: graph search, no training, recall set by `hnsw_ef_search`), or IVF-PQ when memory is the limit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import read_json, write_json

CHUNKS = "chunks.parquet"
INDEX = "index.faiss"
IDS = "index_ids.json"
MANIFEST = "manifest.json"
CHUNK_COLUMNS = ("chunk_id", "doc_id", "source", "ordinal", "start", "end", "n_tokens", "text")


def vector_array(vectors: np.ndarray) -> pa.ListArray:
    """list<float32> built from offsets (no per-row Python objects)."""
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1).astype(np.float32, copy=False)))


def chunks_table(chunks: dict[str, list], vectors: np.ndarray) -> pa.Table:
    types = {"ordinal": pa.int32(), "start": pa.int64(), "end": pa.int64(), "n_tokens": pa.int32()}
    cols = {c: pa.array(chunks[c], types.get(c, pa.string())) for c in CHUNK_COLUMNS}
    cols["vector"] = vector_array(vectors)
    return pa.table(cols)


def build_index(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = 80):
    import faiss

    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)  # exact inner product; on unit vectors == cosine
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"unknown index kind '{kind}' (flat | hnsw)")
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def write_index_dir(out: Path, chunks: dict[str, list], vectors: np.ndarray, manifest: dict[str, Any],
                    kind: str = "flat", hnsw_m: int = 32) -> None:
    import faiss

    pq.write_table(chunks_table(chunks, vectors), out / CHUNKS)
    faiss.write_index(build_index(vectors, kind, hnsw_m), str(out / INDEX))
    write_json(out / IDS, [str(c) for c in chunks["chunk_id"]])
    write_json(out / MANIFEST, manifest)


def read_chunks(index_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(Path(index_dir) / CHUNKS, columns=columns)


def read_vectors(index_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(chunk ids, float32 matrix) in index order."""
    table = read_chunks(index_dir, ["chunk_id", "vector"])
    ids = table.column("chunk_id").to_pylist()
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
    return ids, vectors


def read_index(index_dir: str | Path):
    import faiss

    index_dir = Path(index_dir)
    return faiss.read_index(str(index_dir / INDEX)), read_json(index_dir / IDS), read_json(index_dir / MANIFEST)
