"""MinHash signatures and LSH band keys for a batch of texts, vectorized with numpy.

Deterministic by construction: words are hashed with blake2b (never Python's salted `hash()`), the hash family is
drawn from a fixed seed, and nothing depends on the batch a text lands in. Every Spark executor, the driver and the
benchmarks therefore compute the same signature for the same text.

Definitions (the dedup stage, its tests and bench/bench_dedup.py share them):
- words: `pipelines.data.text.words`, the `[^\\W_]+` runs of the normalized text;
- shingles: the set of word `k`-grams, each hashed to 32 bits (a text of fewer than k words is one shingle of all
  its words; a text without words has no shingles and is never a near-duplicate);
- Jaccard: |A & B| / |A | B| of two shingle-hash sets (what the stage verifies candidates on);
- MinHash: for permutation i, min over shingles x of h_i(x) = ((a_i * x + b_i) mod 2**64) >> 32, a_i odd: the
  multiply-add-shift family (2-universal), applied to shingle hashes that are already fmix64-mixed;
- LSH: `bands` bands of `rows` signature values each; two texts become candidates when all rows of one band agree,
  with probability 1 - (1 - J**rows)**bands.

The per-batch work is a few numpy passes over an (unique shingles x num_perm) matrix taken in chunks, so the
Python-level cost is one regex and one dict lookup per word.
"""
from __future__ import annotations

import hashlib
from itertools import chain
from typing import Sequence

import numpy as np

from pipelines.data.text import words

_SEED = 0x5EED_D0C5
_MASK64 = (1 << 64) - 1
_CHUNK_ROWS = 1 << 15  # unique shingles per (rows x num_perm) block: 32k x 128 x 8 B = 32 MiB


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection that spreads every input bit), on a uint64 array."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xFF51AFD7ED558CCD)
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xC4CEB9FE1A85EC53)
        return x ^ (x >> np.uint64(33))


def _constants(n: int, salt: int) -> np.ndarray:
    """n fixed odd 64-bit constants (seeded; identical in every process)."""
    rng = np.random.default_rng([_SEED, salt])
    return rng.integers(0, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash family: (a odd, b) per permutation."""
    a = _constants(num_perm, 1)
    b = np.random.default_rng([_SEED, 2]).integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    return a, b


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def shingle_sets(texts: Sequence[str | None], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique 32-bit shingle hashes of each text, as (values uint32, offsets int64 of len(texts)+1)."""
    toks = [words(t) for t in texts]
    n_words = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
    flat = list(chain.from_iterable(toks))
    vocab = dict.fromkeys(flat)  # unique words in first-seen order; each hashed once per batch
    for w in vocab:
        vocab[w] = _word_hash(w)
    w_hash = np.fromiter(map(vocab.__getitem__, flat), dtype=np.uint64, count=len(flat))

    n_sh = np.where(n_words >= k, n_words - k + 1, np.minimum(n_words, 1))
    total = int(n_sh.sum())
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), n_sh)
    if total:
        w_off = np.concatenate([[0], np.cumsum(n_words)[:-1]])
        s_off = np.concatenate([[0], np.cumsum(n_sh)[:-1]])
        start = w_off[doc] + (np.arange(total, dtype=np.int64) - s_off[doc])
        width = np.minimum(n_words[doc], k)  # k, or all words of a short text
        padded = np.concatenate([w_hash, np.zeros(k, dtype=np.uint64)])
        mult = _constants(k, 3)
        h = np.zeros(total, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for t in range(k):
                h += np.where(t < width, padded[start + t] * mult[t], np.uint64(0))
        sh = (_fmix64(h) >> np.uint64(32)).astype(np.uint64)
        key = np.sort((doc.astype(np.uint64) << np.uint64(32)) | sh)
        if len(key) > 1:
            key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # sort + mask: faster than np.unique
        values = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        doc_of = (key >> np.uint64(32)).astype(np.int64)
    else:
        values = np.zeros(0, dtype=np.uint32)
        doc_of = np.zeros(0, dtype=np.int64)
    offsets = np.searchsorted(doc_of, np.arange(len(texts) + 1, dtype=np.int64)).astype(np.int64)
    return values, offsets


def signatures(values: np.ndarray, offsets: np.ndarray, num_perm: int) -> np.ndarray:
    """MinHash signatures (n_texts x num_perm, uint32) of shingle sets; a text without shingles gets all-max."""
    n = len(offsets) - 1
    sig = np.full((n, num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    a, b = permutations(num_perm)
    sizes = np.diff(offsets)
    docs = np.flatnonzero(sizes > 0)
    if len(docs) == 0:
        return sig
    x = values.astype(np.uint64)
    # (num_perm x shingles) blocks: reduceat along the contiguous axis is ~9x faster than along axis 0.
    buf = np.empty((num_perm, _CHUNK_ROWS), dtype=np.uint64)
    a_col, b_col = a[:, None], b[:, None]
    i = 0
    while i < len(docs):
        # A run of docs whose shingles fill at most one chunk (one long doc may exceed it alone).
        lo = offsets[docs[i]]
        j = int(np.searchsorted(offsets[docs + 1], lo + _CHUNK_ROWS, side="right"))
        j = max(j, i + 1)
        hi = offsets[docs[j - 1] + 1]
        rows = hi - lo
        block = buf[:, :rows] if rows <= _CHUNK_ROWS else np.empty((num_perm, rows), dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.multiply(a_col, x[None, lo:hi], out=block)
            block += b_col
        starts = offsets[docs[i:j]] - lo
        mins = np.minimum.reduceat(block, starts, axis=1)
        sig[docs[i:j]] = (mins >> np.uint64(32)).astype(np.uint32).T
        i = j
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (text, band) from the band's `rows` signature values: (n_texts x bands, int64)."""
    n, num_perm = sig.shape
    if bands * rows > num_perm:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {num_perm}")
    cube = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    mult = _constants(rows, 4)
    with np.errstate(over="ignore"):
        h = (cube * mult[None, None, :]).sum(axis=2, dtype=np.uint64) + np.arange(bands, dtype=np.uint64)
    return _fmix64(h).view(np.int64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique shingle arrays."""
    if len(a) == 0 and len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def candidate_probability(j: float, bands: int, rows: int) -> float:
    """The LSH S-curve: probability that two texts of Jaccard j share at least one band."""
    return 1.0 - (1.0 - j**rows) ** bands
