"""Is the right paragraph retrieved for each SQuAD-format question? Question loading, question -> paragraph
mapping, and recall@k / MRR scoring over a Retriever (pipelines/embeddings/retrieval.py).

Each question belongs to one paragraph. The paragraphs are documents of the corpus (with content-hash doc_ids), so
each question's paragraph is found by its text: exact match after Unicode/whitespace/case normalisation, else the
most similar document of the same title (difflib ratio >= `min_ratio`, for paragraphs the ingest stage changed,
e.g. by PII redaction). Questions whose paragraph is not in the corpus are counted as `unmapped`, never silently
dropped.

Scoring turns each question's chunk ranking into a document ranking by keeping each document's best chunk;
recall@k is the share of questions whose paragraph is among the first k documents, and MRR is taken over the first
max(ks) documents (0 when it is not there).
"""
from __future__ import annotations

import difflib
import json
import random
import re
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence, TypedDict

from pipelines.embeddings.retrieval import unique_docs

if TYPE_CHECKING:
    import pandas as pd


class Question(TypedDict):
    id: str
    question: str
    context: str  # the paragraph's text
    title: str | None  # its article's title


class MappingCounts(TypedDict):
    exact: int  # same text after normalisation
    fuzzy: int  # most similar document of the same title, ratio >= min_ratio
    unmapped: int  # no paragraph in the corpus


class ParagraphMapping(NamedTuple):
    mapped: dict[str, str]  # question id -> doc_id of its paragraph
    counts: MappingCounts  # questions by how they mapped


class RetrievalScore(NamedTuple):
    questions: int  # mapped questions searched
    recall_curve: dict[int, float]  # k -> recall@k for k in 1..max(ks)
    mrr: float  # over the first max(ks) documents
    search_seconds: float


def normalize(text: str) -> str:
    """NFKC, whitespace runs collapsed, stripped, casefolded. (casefold, not pipelines.data.text's lower(): the
    mapping has always matched with it, and changing it could move a question between exact and fuzzy.)"""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", str(text))).strip().casefold()


def load_questions(path: str | Path) -> list[Question]:
    """Every question in file order: id, question, the paragraph text and its article title."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out: list[Question] = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                out.append({"id": qa["id"], "question": qa["question"], "context": para["context"],
                            "title": article.get("title")})
    return out


def sample_questions(questions: list[Question], max_questions: int | None, seed: int) -> list[Question]:
    """A seeded sample of `max_questions`, in file order; all of them when None or not fewer."""
    if max_questions is None or max_questions >= len(questions):
        return questions
    picked = sorted(random.Random(seed).sample(range(len(questions)), max_questions))
    return [questions[i] for i in picked]


def map_paragraphs(questions: list[Question], corpus: "pd.DataFrame", min_ratio: float) -> ParagraphMapping:
    """Each question's paragraph in `corpus` (doc_id, text, title), and the counts by how it mapped."""
    by_text: dict[str, str] = {}
    for doc_id, text in zip(corpus["doc_id"], corpus["text"]):
        by_text.setdefault(normalize(text), str(doc_id))
    docs = list(zip(corpus["doc_id"], corpus["text"], corpus["title"]))
    para_doc: dict[str, str | None] = {}
    counts: MappingCounts = {"exact": 0, "fuzzy": 0, "unmapped": 0}
    for context in {q["context"] for q in questions}:
        norm = normalize(context)
        if norm in by_text:
            para_doc[context] = by_text[norm]
            continue
        title = next(q["title"] for q in questions if q["context"] == context)
        candidates = [d for d in docs if d[2] == title] or docs
        best, best_ratio = None, 0.0
        for doc_id, text, _ in candidates:
            m = difflib.SequenceMatcher(None, norm, normalize(text), autojunk=False)
            if m.real_quick_ratio() >= min_ratio and m.quick_ratio() >= min_ratio:
                r = m.ratio()
                if r > best_ratio:
                    best, best_ratio = str(doc_id), r
        para_doc[context] = best if best_ratio >= min_ratio else None
    mapped = {}
    for q in questions:
        doc = para_doc[q["context"]]
        if doc is None:
            counts["unmapped"] += 1
        else:
            mapped[q["id"]] = doc
            counts["exact" if normalize(q["context"]) in by_text else "fuzzy"] += 1
    return ParagraphMapping(mapped, counts)


def rank_of(doc_ranking: list[str], target: str) -> int | None:
    """1-based rank of target in the document ranking, None when absent."""
    try:
        return doc_ranking.index(target) + 1
    except ValueError:
        return None


def score(retriever: Any, questions: list[Question], mapped: dict[str, str], *, source: str, ks: Sequence[int],
          fetch_k: int, batch_size: int) -> RetrievalScore:
    """recall@k and MRR@max(ks) of the mapped questions, searching only `source` chunks (`fetch_k` per question,
    `batch_size` questions per encode call). `retriever`: anything with Retriever's `search_batch`."""
    qs = [q for q in questions if q["id"] in mapped]
    top = max(ks)
    ranks: list[int | None] = []
    t0 = time.perf_counter()
    for i in range(0, len(qs), batch_size):
        batch = qs[i:i + batch_size]
        hits = retriever.search_batch([q["question"] for q in batch], fetch_k, sources=[source],
                                      batch_size=batch_size)
        for q, h in zip(batch, hits):
            ranks.append(rank_of([d.doc_id for d in unique_docs(h)][:top], mapped[q["id"]]))
    seconds = time.perf_counter() - t0
    n = len(ranks)
    recall = {k: (sum(1 for r in ranks if r is not None and r <= k) / n if n else 0.0) for k in range(1, top + 1)}
    mrr = sum(1.0 / r for r in ranks if r is not None) / n if n else 0.0
    return RetrievalScore(n, recall, mrr, seconds)
