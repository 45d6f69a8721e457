"""Per-example text scores: SQuAD exact match and token F1, context recall, groundedness, refusal.

- EM / F1: the official SQuAD v1.1 normalisation (lower case, punctuation, articles a/an/the, whitespace), the
  best over the gold answers.
- context recall: a gold answer (normalised) occurs in the retrieved chunks (normalised).
- groundedness: the share of the answer's content words found in the contexts (the same definition online
  evaluation applies to live RAG answers: `pipelines.monitoring.online_eval.groundedness`).
- refusal: the audit's marker list (`pipelines.models.safety.is_refusal`).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

from pipelines.models.safety import is_refusal
from pipelines.monitoring.online_eval import groundedness as _groundedness

__all__ = ["exact_match", "token_f1", "context_recall", "groundedness", "is_refusal", "normalize_answer"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    return max((_f1(prediction, a) for a in answers), default=0.0)


def context_recall(answers: Sequence[str], contexts: Sequence[str]) -> float:
    joined = " ".join(normalize_answer(c) for c in contexts)
    return float(any(normalize_answer(a) and normalize_answer(a) in joined for a in answers))


def groundedness(answer: str, contexts: Sequence[str]) -> float:
    """Share of the answer's content words in the contexts; 0.0 for an answer without content words (nothing of
    it is supported), so the column has a value for every example."""
    g = _groundedness(answer, [{"text": c} for c in contexts])
    return 0.0 if g is None else float(g)
