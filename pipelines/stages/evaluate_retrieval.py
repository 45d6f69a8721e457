"""evaluate_retrieval: is the right paragraph retrieved for each XQuAD (English) question?

Each question of `questions_path` (SQuAD format) belongs to one paragraph. The paragraphs are the `source` documents
of the curated corpus (ingest gives them content-hash doc_ids), so each question's paragraph is found by its text:
exact match after Unicode/whitespace/case normalisation, else the most similar document of the same title
(difflib ratio >= `min_fuzzy_ratio`, for paragraphs the ingest stage changed, e.g. by PII redaction). Questions whose
paragraph is not in the corpus (filtered or deduplicated away) are counted as `unmapped`, never silently dropped;
more than `max_unmapped_fraction` of them stops the stage.

Questions are encoded in batches and searched with a filter on `source` (only the paragraphs' chunks are scored);
the chunk ranking (`fetch_k` chunks) becomes a document ranking by keeping each document's best chunk. Metrics:
recall@k (the right paragraph among the first k documents) for each k in `ks`, and MRR over the first max(ks)
documents (0 when it is not there). `max_questions` draws a seeded sample (null: all 1,190) to bound CPU time.
Writes metrics/evaluate_retrieval.json and the recall@k curve plots/retrieval_recall_at_k.csv (k, recall).
"""
from __future__ import annotations

import difflib
import json
import random
import re
import time
import unicodedata
from pathlib import Path

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.io import write_json, write_text
from pipelines.errors import StageFailed

SECTION = "evaluate_retrieval"


class Config(StageConfig):
    embeddings_dir: str = "data/embeddings"
    corpus_dir: str = "data/curated/corpus"
    questions_path: str = "data/sample/rag/xquad.en.json"
    source: str = "xquad_en"  # corpus source holding the paragraphs; the search is filtered on it
    max_questions: int | None = Field(300, ge=1)  # seeded sample; null: every question
    seed: int = 42
    ks: list[int] = Field(default_factory=lambda: [1, 3, 5, 10])
    fetch_k: int = Field(50, ge=1)  # chunks per question before collapsing to documents
    batch_size: int = Field(64, ge=1)  # questions per encode call
    min_fuzzy_ratio: float = Field(0.9, gt=0, le=1)
    max_unmapped_fraction: float = Field(0.05, ge=0, le=1)
    metrics: str = "metrics/evaluate_retrieval.json"
    plot: str = "plots/retrieval_recall_at_k.csv"


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", str(text))).strip().casefold()


def load_questions(path: str | Path) -> list[dict]:
    """Every question in file order: id, question, the paragraph text and its article title."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                out.append({"id": qa["id"], "question": qa["question"], "context": para["context"],
                            "title": article.get("title")})
    return out


def sample_questions(questions: list[dict], max_questions: int | None, seed: int) -> list[dict]:
    if max_questions is None or max_questions >= len(questions):
        return questions
    picked = sorted(random.Random(seed).sample(range(len(questions)), max_questions))
    return [questions[i] for i in picked]


def map_paragraphs(questions: list[dict], corpus, min_ratio: float) -> tuple[dict[str, str], dict[str, int]]:
    """question id -> doc_id of its paragraph in `corpus` (doc_id, text, title); plus counts by how it mapped."""
    by_text: dict[str, str] = {}
    for doc_id, text in zip(corpus["doc_id"], corpus["text"]):
        by_text.setdefault(normalize(text), str(doc_id))
    docs = list(zip(corpus["doc_id"], corpus["text"], corpus["title"]))
    para_doc: dict[str, str | None] = {}
    counts = {"exact": 0, "fuzzy": 0, "unmapped": 0}
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
    return mapped, counts


def rank_of(doc_ranking: list[str], target: str) -> int | None:
    """1-based rank of target in the document ranking, None when absent."""
    try:
        return doc_ranking.index(target) + 1
    except ValueError:
        return None


def score(retriever, questions: list[dict], mapped: dict[str, str], cfg: Config) -> dict:
    """recall@k and MRR@max(ks) of the mapped questions, searching only `cfg.source` chunks."""
    from pipelines.embeddings.retrieval import unique_docs

    qs = [q for q in questions if q["id"] in mapped]
    top = max(cfg.ks)
    ranks: list[int | None] = []
    t0 = time.perf_counter()
    for i in range(0, len(qs), cfg.batch_size):
        batch = qs[i:i + cfg.batch_size]
        hits = retriever.search_batch([q["question"] for q in batch], cfg.fetch_k, sources=[cfg.source],
                                      batch_size=cfg.batch_size)
        for q, h in zip(batch, hits):
            ranks.append(rank_of([d.doc_id for d in unique_docs(h)][:top], mapped[q["id"]]))
    seconds = time.perf_counter() - t0
    n = len(ranks)
    recall = {k: (sum(1 for r in ranks if r is not None and r <= k) / n if n else 0.0) for k in range(1, top + 1)}
    mrr = sum(1.0 / r for r in ranks if r is not None) / n if n else 0.0
    return {"questions": n, "recall_curve": recall, "mrr": mrr, "search_seconds": seconds}


def run(cfg: Config, retriever=None) -> dict:
    from pipelines.embeddings.retrieval import Retriever
    from pipelines.schema import read_corpus

    started = time.perf_counter()
    all_questions = load_questions(cfg.questions_path)
    questions = sample_questions(all_questions, cfg.max_questions, cfg.seed)
    corpus = read_corpus(cfg.corpus_dir, columns=["doc_id", "source", "text", "title"])
    corpus = corpus[corpus["source"] == cfg.source]
    if corpus.empty:
        raise StageFailed(f"evaluate_retrieval: no '{cfg.source}' documents in {cfg.corpus_dir}")
    mapped, counts = map_paragraphs(questions, corpus, cfg.min_fuzzy_ratio)
    unmapped_fraction = counts["unmapped"] / len(questions)
    if unmapped_fraction > cfg.max_unmapped_fraction:
        raise StageFailed(
            f"evaluate_retrieval: {counts['unmapped']} of {len(questions)} questions have no paragraph in "
            f"{cfg.corpus_dir} (source {cfg.source}); allowed fraction {cfg.max_unmapped_fraction}. Was the "
            f"paragraph filtered or deduplicated away, or is `source` wrong?"
        )
    retriever = retriever or Retriever(cfg.embeddings_dir)
    result = score(retriever, questions, mapped, cfg)
    curve = result["recall_curve"]
    report = {
        **{f"recall_at_{k}": round(curve[k], 4) for k in sorted(set(cfg.ks))},
        "mrr": round(result["mrr"], 4),
        "mrr_cutoff": max(cfg.ks),
        "questions": result["questions"],
        "questions_sampled": len(questions),
        "questions_total": len(all_questions),
        "mapped_exact": counts["exact"],
        "mapped_fuzzy": counts["fuzzy"],
        "unmapped": counts["unmapped"],
        "paragraphs": int(len(corpus)),
        "chunks_searched": sum(1 for s in retriever.sources if s == cfg.source),
        "fetch_k": cfg.fetch_k,
        "queries_per_s": round(result["questions"] / result["search_seconds"], 1) if result["search_seconds"] else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    rows = ["k,recall"] + [f"{k},{curve[k]:.4f}" for k in sorted(curve)]
    write_text(cfg.plot, "\n".join(rows) + "\n")
    write_json(cfg.metrics, report)
    return report
