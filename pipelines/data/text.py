"""The one text normalizer: what "the same text" means for exact dedup, near-duplicate shingles and validation.

(Ingest's cleaning, `pipelines.data.clean.normalize`, is another job: it repairs the stored text itself.)
Self-contained (stdlib only), so Spark ships it to executors by value.
"""
from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_]+")


def normalize_text(text: str | None) -> str:
    """NFKC, lowercase, collapse whitespace runs to one space, strip: full-width, case and spacing noise vanish."""
    if text is None:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def words(text: str | None) -> list[str]:
    """The word runs (`[^\\W_]+`) of the normalized text: the tokens of shingles and n-grams."""
    return _WORD.findall(normalize_text(text))


def text_key(text: str | None) -> str:
    """Exact-duplicate key: sha256 of the normalized text (dedup computes the same in Spark SQL with sha2)."""
    import hashlib

    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()
