"""Content-addressed embedding cache: sha256(model fingerprint + chunk text) -> vector.

Why outside the embed stage's DVC outputs: DVC deletes a stage's outputs before running it, so a cache inside
`data/embeddings` would be gone exactly when it is needed. `persist: true` on an output would keep it, but DVC then
skips its run cache for the stage, versions (and pushes) the cache as if it were a result, and the output starts to
depend on the history of runs rather than only on the inputs. A memo whose key is the full content of what it
memoizes (model weights fingerprint + exact text) cannot change a result, only skip work, so it lives beside the
pipeline like ccache beside make: `embed.cache_dir` (default `data/cache/embeddings`, gitignored, not declared in
dvc.yaml). Deleting it only costs time; `cache_dir: null` turns it off.

Layout: `<cache_dir>/<model fingerprint[:16]>/shard-<hash>.parquet`, each shard a table (key: string, vector:
fixed_size_list<float32>) written atomically (temp + rename) and never modified; a run that embeds new chunks adds
one shard; past `max_shards` shards they are compacted into one.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

MODEL_FILES_SKIPPED = {"README.md"}


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over every file of the model directory (relative path + bytes): weights, config, tokenizer, pooling."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in MODEL_FILES_SKIPPED):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def content_key(fingerprint: str, text: str) -> str:
    return hashlib.sha256(f"{fingerprint}\0{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, fingerprint: str, dim: int | None = None, max_shards: int = 32):
        self.dir = Path(root) / fingerprint[:16]
        self.dim = dim
        self.max_shards = max_shards

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.parquet")) if self.dir.exists() else []

    def lookup(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those keys that are present (float32, one row each)."""
        wanted = set(keys)
        found: dict[str, np.ndarray] = {}
        for shard in self.shards():
            table = _read_shard(shard)
            if table is None:
                continue
            shard_keys = table.column("key").to_pylist()
            if not wanted.intersection(shard_keys):
                continue
            col = table.column("vector").combine_chunks()
            vectors = col.flatten().to_numpy().reshape(len(shard_keys), col.type.list_size)
            for i, k in enumerate(shard_keys):
                if k in wanted and k not in found:
                    v = vectors[i]
                    if (self.dim is None or v.shape[0] == self.dim) and np.isfinite(v).all():
                        found[k] = v.astype(np.float32, copy=True)
        return found

    def add(self, keys: list[str], vectors: np.ndarray) -> Path | None:
        """Write one new immutable shard; compact when there are too many."""
        if not keys:
            return None
        digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
        path = self._write(self.dir / f"shard-{digest}.parquet", keys, vectors)
        if len(self.shards()) > self.max_shards:
            self.compact()
        return path

    def compact(self) -> None:
        old = self.shards()
        keys, vecs, seen = [], [], set()
        for shard in old:
            table = _read_shard(shard)
            if table is None:
                continue
            col = table.column("vector").combine_chunks()
            ks = table.column("key").to_pylist()
            vs = col.flatten().to_numpy().reshape(len(ks), col.type.list_size)
            for k, v in zip(ks, vs):
                if k not in seen:
                    seen.add(k)
                    keys.append(k)
                    vecs.append(v)
        if not keys:
            return
        merged = self._write(self.dir / f"shard-compact-{uuid.uuid4().hex[:12]}.parquet", keys, np.stack(vecs))
        for shard in old:
            if shard != merged:
                shard.unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, keys: list[str], vectors: np.ndarray) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "key": pa.array(keys, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        })
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path


def _read_shard(path: Path):
    """The shard's table, or None when another process's `compact` removed it after our listing (two stages
    sharing one cache: its vectors are in that compacted shard now, so here they are at worst a miss)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except FileNotFoundError:
        return None
