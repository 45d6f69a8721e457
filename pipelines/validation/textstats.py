"""Text-corpus statistics behind the custom GX expectations (and the hand-written benchmark baseline).

Plain Python / numpy, no GX import: the same functions back the Pandas metric providers, the Spark metric
providers (as UDFs, so every hash must be deterministic across processes: crc32, never `hash()`), and tests.
"""
from __future__ import annotations

import re
from typing import Iterable


from pipelines.data.minhash import shingle_sets
from pipelines.data.text import text_key, words  # noqa: F401  (words: part of this module's API)

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
    """Exact-duplicate key: the dedup stage's notion of 'same text' (`pipelines.data.text.text_key`)."""
    return text_key(text)


def ngram_hashes(text: str | None, n: int) -> set[int]:
    """Word n-gram shingles of the normalized text, hashed as near-duplicate detection hashes them
    (`pipelines.data.minhash.shingle_sets`; a text shorter than n words is one shingle of all its words)."""
    values, _ = shingle_sets([text], n)
    return {int(v) for v in values}


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
