"""Top-k retrieval over the embed stage's output: `Retriever(index_dir).search(query, k, sources=[...])`.

The Retriever loads the FAISS index, the chunk table and the index's own model once (the manifest names the model
package, so an index built elsewhere still loads here) and answers queries with scored hits. A source filter is
applied inside FAISS with an ID selector (only rows of those sources are scored), so k hits come back whenever
that many chunks of those sources exist: no over-fetch-then-filter that can come back short.
Used by the retrieval evaluation stage, `llmops retrieve`, and (later) serving.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipelines.embeddings.encoder import encode, load_model, resolve_model_dir
from pipelines.embeddings.index import read_chunks, read_index


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    source: str
    score: float  # cosine similarity (inner product of unit vectors)
    text: str
    start: int  # character span of the chunk in its document
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


class Retriever:
    def __init__(self, index_dir: str | Path, model=None, threads: int | None = None, ef_search: int = 64):
        self.index_dir = Path(index_dir)
        if not (self.index_dir / "index.faiss").exists():
            raise FileNotFoundError(f"no vector index in {self.index_dir} (run the embed stage: `dvc repro embed`)")
        self.index, self.ids, self.manifest = read_index(self.index_dir)
        table = read_chunks(self.index_dir, ["chunk_id", "doc_id", "source", "text", "start", "end"])
        self.chunk_ids = table.column("chunk_id").to_pylist()
        if self.chunk_ids != list(self.ids) or self.index.ntotal != len(self.chunk_ids):
            raise ValueError(f"{self.index_dir}: index, index_ids.json and chunks.parquet disagree; rerun embed")
        self.doc_ids = table.column("doc_id").to_pylist()
        self.sources = np.asarray(table.column("source").to_pylist(), dtype=object)
        self.texts = table.column("text").to_pylist()
        self.starts = table.column("start").to_pylist()
        self.ends = table.column("end").to_pylist()
        self.ef_search = ef_search
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = ef_search
        self.model = model or load_model(
            resolve_model_dir(self.manifest.get("model_package"), self.manifest.get("model_path")), threads)
        self._selectors: dict[frozenset, tuple] = {}

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def _params(self, sources: Iterable[str] | None):
        import faiss

        if sources is None:
            return None, len(self)
        key = frozenset([sources] if isinstance(sources, str) else sources)
        if key not in self._selectors:
            rows = np.flatnonzero(np.isin(self.sources, list(key))).astype(np.int64)
            self._selectors[key] = (faiss.IDSelectorBatch(rows), len(rows))
        sel, n = self._selectors[key]
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef_search), n
        return faiss.SearchParameters(sel=sel), n

    def encode(self, queries: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return encode(self.model, list(queries), batch_size)

    def search_vectors(self, vectors: np.ndarray, k: int = 5, sources: Iterable[str] | None = None
                       ) -> list[list[Hit]]:
        params, available = self._params(sources)
        k = min(k, available)
        if k <= 0:
            return [[] for _ in range(len(vectors))]
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)
        return [[self._hit(r, s) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]

    def search_batch(self, queries: Sequence[str], k: int = 5, sources: Iterable[str] | None = None,
                     batch_size: int = 64) -> list[list[Hit]]:
        return self.search_vectors(self.encode(queries, batch_size), k, sources)

    def search(self, query: str, k: int = 5, sources: Iterable[str] | None = None) -> list[Hit]:
        """Top-k chunks for one query, best first."""
        return self.search_batch([query], k, sources)[0]

    def _hit(self, row: int, score: float) -> Hit:
        return Hit(self.chunk_ids[row], self.doc_ids[row], str(self.sources[row]), float(score), self.texts[row],
                   int(self.starts[row]), int(self.ends[row]))


def unique_docs(hits: Sequence[Hit]) -> list[Hit]:
    """The best-scoring hit of each document, in rank order (a document ranking from a chunk ranking)."""
    seen, out = set(), []
    for h in hits:
        if h.doc_id not in seen:
            seen.add(h.doc_id)
            out.append(h)
    return out


@functools.lru_cache(maxsize=4)
def _retriever(index_dir: str) -> Retriever:
    return Retriever(index_dir)


def search(index_dir: str | Path, query: str, k: int = 5, sources: Iterable[str] | None = None) -> list[Hit]:
    """Top-k chunks (chunk_id, doc_id, source, score, text, span), best first; one Retriever per index dir."""
    return _retriever(str(Path(index_dir).resolve())).search(query, k, sources)
