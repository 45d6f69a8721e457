"""Text-corpus statistics behind the custom GX expectations (and the hand-written benchmark baseline).

Plain Python / numpy, no GX import: the same functions back the Pandas metric providers, the Spark metric
providers (as UDFs, so every hash must be deterministic across processes: sha256 and blake2b, never `hash()`),
and tests. "Same text" and "same words" are `pipelines.data.text`'s, shingles `pipelines.data.minhash`'s, and the
near-duplicate rate is `pipelines.data.near_duplicates.near_duplicate_rate` (dedup's definition).
"""
from __future__ import annotations

import re
from typing import Iterable

from pipelines.data.minhash import shingle_sets
from pipelines.data.text import text_key

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
# Lowercase only, no NFKC: the same tokens as the Spark provider's `lower` + `split` on non-letters/digits.
_WORD = re.compile(r"[^\W_]+")


def detected_pii_rate(texts: Iterable[str | None], entities: Iterable[str] | None = None) -> float:
    """Share of rows in which ingest's own detector still finds PII: `pipelines.data.pii.detect` (validators) for
    the structured types, plus `pipelines.data.pii_ner` when `entities` names NER types. The curated suite's
    PII-rate expectation uses it, so validation and ingest agree on what PII is (placeholders never match)."""
    from pipelines.data import pii

    texts = list(texts)
    if not texts:
        return 0.0
    wanted = list(pii.ENTITIES if entities is None else entities)
    if any(e in pii.NER_ENTITIES for e in wanted):
        from pipelines.data import pii_ner

        flags = [bool(spans) for spans in pii_ner.detect_many(texts, wanted)]
    else:
        flags = [bool(t) and bool(pii.detect(t, wanted)) for t in texts]
    return float(sum(flags) / len(flags))


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


def ngram_hashes(text: str | None, n: int) -> set[int]:
    """Word n-gram shingles of the normalized text, hashed as near-duplicate detection hashes them
    (`pipelines.data.minhash.shingle_sets`; a text shorter than n words is one shingle of all its words)."""
    return _ngram_sets([text], n)[0]


def _ngram_sets(texts: list[str | None], n: int) -> list[set[int]]:
    """`ngram_hashes` of each text, in one vectorized pass (shingle hashes do not depend on the batch)."""
    values, offsets = shingle_sets(texts, n)
    return [set(values[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(texts))]


def duplicate_rate(texts: list[str | None]) -> float:
    """Share of rows whose normalized text occurs more than once."""
    if not texts:
        return 0.0
    keys = [text_key(t) for t in texts]  # dedup's exact-duplicate key
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return sum(1 for k in keys if counts[k] > 1) / len(keys)


def overlap_rate(texts: list[str | None], splits: list[str], reference: str = "train", ngram: int = 0) -> float:
    """Share of non-reference rows (eval/test) that share their normalized-text hash (ngram=0) or any word
    `ngram`-gram (decontamination, e.g. 13 as in GPT-3) with a reference (train) row."""
    texts = list(texts)
    key_sets = [{text_key(t)} for t in texts] if ngram <= 0 else _ngram_sets(texts, ngram)
    ref_keys: set = set()
    others: list[set] = []
    for keys, split in zip(key_sets, splits):
        if split == reference:
            ref_keys |= keys
        else:
            others.append(keys)
    if not others:
        return 0.0
    return sum(1 for keys in others if keys & ref_keys) / len(others)
