"""search(index_dir, query, k): embed the query with the index's own model and return the nearest documents."""
from __future__ import annotations

import functools
from pathlib import Path

from pipelines.embeddings.encoder import encode, load_model, resolve_model_dir
from pipelines.embeddings.index import read_index


@functools.lru_cache(maxsize=4)
def _load(index_dir: str):
    index, ids, manifest = read_index(index_dir)
    # The manifest names the package (not a site-packages path), so an index built elsewhere still loads here.
    model = load_model(resolve_model_dir(manifest.get("model_package"), manifest.get("model_path")))
    return index, ids, model


def search(index_dir: str | Path, query: str, k: int = 5) -> list[tuple[str, float]]:
    """Top-k (doc_id, cosine score), best first."""
    index, ids, model = _load(str(Path(index_dir).resolve()))
    scores, rows = index.search(encode(model, [query]), min(k, index.ntotal))
    return [(ids[r], float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
