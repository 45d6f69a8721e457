"""Text-corpus statistics behind the custom GX expectations (and the hand-written benchmark baseline).

Plain Python / numpy, no GX import: the same functions back the Pandas metric providers, the Spark metric
providers (as UDFs, so every hash must be deterministic across processes: crc32, never `hash()`), and tests.
"""
from __future__ import annotations

import re
import zlib
from typing import Iterable

import numpy as np

from pipelines.data.text import normalize_text

# PII that should not survive redaction: e-mail addresses, phone numbers, IPv4 addresses, card-like and
# IBAN-like numbers, US SSNs. Redaction placeholders such as [EMAIL] do not match. One pattern, also used in
# Spark's `rlike` (Java regex): keep it in the common subset of both dialects.
PII_PATTERN = (
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
    r"|\(?\b[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b"
    r"|\+[0-9]{1,3}[ .-]?[0-9]{2,4}[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}\b"
    r"|\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b"
    r"|\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"
    r"|\b[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}\b"
)
# Phones: North-American 3-3-4 with separators, or international with a leading plus; dates, years, digit
# lists in code do not match. On the shipped sample only two example.com addresses match (0.24% of rows).
_PII = re.compile(PII_PATTERN)

# English function words: a text "is English" when it contains at least MIN_STOPWORDS distinct ones. Cheap,
# deterministic, identical in Pandas and Spark (array_intersect of the word set), no model download.
EN_STOPWORDS: tuple[str, ...] = (
    "the", "and", "of", "to", "in", "is", "that", "it", "for", "was", "on", "are", "with", "as", "this",
    "be", "by", "at", "or", "from", "you", "your", "what", "which", "an", "have", "not", "can", "a", "i",
)
MIN_STOPWORDS = 2
_WORD = re.compile(r"[^\W_]+")

_MERSENNE = np.uint64((1 << 61) - 1)


def words(text: str | None) -> list[str]:
    return _WORD.findall(normalize_text(text))


def has_pii(text: str | None) -> bool:
    return bool(text) and _PII.search(text) is not None


def pii_rate(texts: Iterable[str | None]) -> float:
    flags = [has_pii(t) for t in texts]
    return float(sum(flags) / len(flags)) if flags else 0.0


def is_english(text: str | None) -> bool:
    return len(set(_WORD.findall((text or "").lower())) & set(EN_STOPWORDS)) >= MIN_STOPWORDS


def english_share(texts: Iterable[str | None]) -> float:
    flags = [is_english(t) for t in texts]
    return float(sum(flags) / len(flags)) if flags else 0.0


def text_hash(text: str | None) -> str:
    """Exact-duplicate key: the normalized text's crc32 + length (the dedup stage's notion of 'same text')."""
    norm = normalize_text(text)
    return f"{zlib.crc32(norm.encode()):08x}:{len(norm)}"


def ngram_hashes(text: str | None, n: int) -> set[int]:
    """crc32 of every word n-gram of the normalized text (a text shorter than n gives its whole word string)."""
    toks = words(text)
    if not toks:
        return set()
    if len(toks) < n:
        return {zlib.crc32(" ".join(toks).encode())}
    return {zlib.crc32(" ".join(toks[i : i + n]).encode()) for i in range(len(toks) - n + 1)}


def _perm_params(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_bands(text: str | None, shingle: int = 5, num_perm: int = 32, bands: int = 8) -> list[str]:
    """LSH band keys of a MinHash signature over word shingles: two texts share a key with probability ~
    1 - (1 - J^r)^b (r = num_perm / bands rows per band; J their shingle Jaccard similarity)."""
    hashes = ngram_hashes(text, shingle)
    if not hashes:
        return []
    a, b = _perm_params(num_perm)
    x = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
    with np.errstate(over="ignore"):
        sig = ((np.outer(x, a) + b) % _MERSENNE).min(axis=0)
    rows = num_perm // bands
    return [f"{i}:{zlib.crc32(sig[i * rows:(i + 1) * rows].tobytes()):08x}" for i in range(bands)]


def near_duplicate_rate(texts: list[str | None], shingle: int = 5, num_perm: int = 32, bands: int = 8) -> float:
    """Share of rows that collide in at least one LSH band with another row (exact duplicates included)."""
    if not texts:
        return 0.0
    owners: dict[str, int] = {}
    flagged: set[int] = set()
    for i, text in enumerate(texts):
        for key in minhash_bands(text, shingle, num_perm, bands):
            j = owners.setdefault(key, i)
            if j != i:
                flagged.update((i, j))
    return len(flagged) / len(texts)


def duplicate_rate(texts: list[str | None]) -> float:
    """Share of rows whose normalized text occurs more than once."""
    if not texts:
        return 0.0
    keys = [text_hash(t) for t in texts]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return sum(1 for k in keys if counts[k] > 1) / len(keys)


def overlap_rate(texts: list[str | None], splits: list[str], reference: str = "train", ngram: int = 0) -> float:
    """Share of non-reference rows (eval/test) that share their normalized-text hash (ngram=0) or any word
    `ngram`-gram (decontamination, e.g. 13 as in GPT-3) with a reference (train) row."""
    ref_keys: set = set()
    others: list[set] = []
    for text, split in zip(texts, splits):
        keys = {text_hash(text)} if ngram <= 0 else ngram_hashes(text, ngram)
        if split == reference:
            ref_keys |= keys
        else:
            others.append(keys)
    if not others:
        return 0.0
    return sum(1 for keys in others if keys & ref_keys) / len(others)
