"""Offline language identification with py3langid (the langid.py model, 97 languages, bundled in the wheel)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # norm_probs: confidences are probabilities (0..1), comparable to a threshold across text lengths.
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str | None, sample_chars: int = 2000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the first `sample_chars` characters; ("und", 0.0) for empty text."""
    if not text or not text.strip():
        return "und", 0.0
    lang, prob = _identifier().classify(text[:sample_chars])
    return lang, round(float(prob), 4)
