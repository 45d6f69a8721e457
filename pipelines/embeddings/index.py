"""The embed stage's output directory: vectors.parquet, index.faiss, index_ids.json and manifest.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import read_json, write_json

VECTORS = "vectors.parquet"
INDEX = "index.faiss"
IDS = "index_ids.json"
MANIFEST = "manifest.json"


def vectors_table(doc_ids: np.ndarray, sources: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """doc_id, source, vector as list<float32> (built from offsets: no per-row Python objects)."""
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    flat = pa.array(vectors.reshape(-1).astype(np.float32, copy=False))
    return pa.table({
        "doc_id": pa.array(doc_ids.astype(str), pa.string()),
        "source": pa.array(sources.astype(str), pa.string()),
        "vector": pa.ListArray.from_arrays(offsets, flat),
    })


def write_index_dir(out: Path, doc_ids: np.ndarray, sources: np.ndarray, vectors: np.ndarray,
                    manifest: dict[str, Any]) -> None:
    import faiss

    pq.write_table(vectors_table(doc_ids, sources, vectors), out / VECTORS)
    # Exact inner-product search on unit vectors == cosine; exact is right at this size (IVF/HNSW later).
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(out / INDEX))
    write_json(out / IDS, [str(d) for d in doc_ids])
    write_json(out / MANIFEST, manifest)


def read_vectors(index_dir: str | Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(Path(index_dir) / VECTORS)
    ids = table.column("doc_id").to_pylist()
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
    return ids, vectors


def read_index(index_dir: str | Path):
    import faiss

    index_dir = Path(index_dir)
    return faiss.read_index(str(index_dir / INDEX)), read_json(index_dir / IDS), read_json(index_dir / MANIFEST)
