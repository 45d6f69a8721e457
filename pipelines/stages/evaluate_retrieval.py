"""evaluate_retrieval: is the right paragraph retrieved for each XQuAD (English) question?

Each question of `questions_path` (SQuAD format) belongs to one paragraph. The paragraphs are the `source` documents
of the curated corpus (ingest gives them content-hash doc_ids), so each question's paragraph is found by its text:
exact match after normalisation, else the most similar document of the same title (difflib ratio >=
`min_fuzzy_ratio`; pipelines/embeddings/retrieval_eval.py). Questions whose paragraph is not in the corpus (filtered
or deduplicated away) are counted as `unmapped`, never silently dropped; more than `max_unmapped_fraction` of them
stops the stage.

Questions are encoded in batches and searched with a filter on `source` (only the paragraphs' chunks are scored);
the chunk ranking (`fetch_k` chunks) becomes a document ranking by keeping each document's best chunk. Metrics:
recall@k (the right paragraph among the first k documents) for each k in `ks`, and MRR over the first max(ks)
documents (0 when it is not there). `max_questions` draws a seeded sample (null: all 1,190) to bound CPU time.
Writes metrics/evaluate_retrieval.json and the recall@k curve plots/retrieval_recall_at_k.csv (k, recall).
"""
from __future__ import annotations

import time
from typing import TypedDict

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.embeddings.retrieval_eval import load_questions, map_paragraphs, sample_questions, score
from pipelines.errors import StageFailed
from pipelines.io import write_json, write_text
from pipelines.schema import read_corpus

SECTION = "evaluate_retrieval"


class Config(StageConfig):
    embeddings_dir: str
    corpus_dir: str
    questions_path: str
    source: str  # corpus source holding the paragraphs; the search is filtered on it
    max_questions: int | None = Field(ge=1)  # seeded sample; null: every question
    seed: int
    ks: list[int]
    fetch_k: int = Field(ge=1)  # chunks per question before collapsing to documents
    batch_size: int = Field(ge=1)  # questions per encode call
    min_fuzzy_ratio: float = Field(gt=0, le=1)
    max_unmapped_fraction: float = Field(ge=0, le=1)
    metrics: str
    plot: str


class Report(TypedDict):
    """metrics/evaluate_retrieval.json; plus `recall_at_<k>` for each k in `ks` (keys named by the params)."""

    mrr: float
    mrr_cutoff: int  # max(ks)
    questions: int  # mapped questions scored
    questions_sampled: int
    questions_total: int
    mapped_exact: int
    mapped_fuzzy: int
    unmapped: int
    paragraphs: int
    chunks_searched: int
    fetch_k: int
    queries_per_s: float | None
    seconds: float


def run(cfg: Config, retriever=None) -> Report:
    """`retriever`: a loaded pipelines.embeddings.retrieval.Retriever to reuse (tests); else one over embeddings_dir."""
    started = time.perf_counter()
    all_questions = load_questions(cfg.questions_path)
    questions = sample_questions(all_questions, cfg.max_questions, cfg.seed)
    corpus = read_corpus(cfg.corpus_dir, columns=["doc_id", "source", "text", "title"])
    corpus = corpus[corpus["source"] == cfg.source]
    if corpus.empty:
        raise StageFailed(f"evaluate_retrieval: no '{cfg.source}' documents in {cfg.corpus_dir}")
    mapping = map_paragraphs(questions, corpus, cfg.min_fuzzy_ratio)
    counts = mapping.counts
    if counts["unmapped"] / len(questions) > cfg.max_unmapped_fraction:
        raise StageFailed(
            f"evaluate_retrieval: {counts['unmapped']} of {len(questions)} questions have no paragraph in "
            f"{cfg.corpus_dir} (source {cfg.source}); allowed fraction {cfg.max_unmapped_fraction}. Was the "
            f"paragraph filtered or deduplicated away, or is `source` wrong?"
        )
    if retriever is None:
        from pipelines.embeddings.retrieval import Retriever  # loads the model: only when the stage runs

        retriever = Retriever(cfg.embeddings_dir)
    result = score(retriever, questions, mapping.mapped, source=cfg.source, ks=cfg.ks, fetch_k=cfg.fetch_k,
                   batch_size=cfg.batch_size)
    curve = result.recall_curve
    report: Report = {
        **{f"recall_at_{k}": round(curve[k], 4) for k in sorted(set(cfg.ks))},  # type: ignore[typeddict-item]
        "mrr": round(result.mrr, 4),
        "mrr_cutoff": max(cfg.ks),
        "questions": result.questions,
        "questions_sampled": len(questions),
        "questions_total": len(all_questions),
        "mapped_exact": counts["exact"],
        "mapped_fuzzy": counts["fuzzy"],
        "unmapped": counts["unmapped"],
        "paragraphs": int(len(corpus)),
        "chunks_searched": sum(1 for s in retriever.sources if s == cfg.source),
        "fetch_k": cfg.fetch_k,
        "queries_per_s": round(result.questions / result.search_seconds, 1) if result.search_seconds else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    rows = ["k,recall"] + [f"{k},{curve[k]:.4f}" for k in sorted(curve)]
    write_text(cfg.plot, "\n".join(rows) + "\n")
    write_json(cfg.metrics, report)
    return report
