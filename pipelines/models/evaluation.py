"""Scoring a causal LM on held-out instruction rows: response-only perplexity and ROUGE-L of greedy generations.

- Perplexity: response tokens only (the prompt is chat-formatted and masked out), token-weighted over the scored
  examples (`lm.build_sft_example` / `lm.response_nll`).
- ROUGE-L F1 (rouge-score, stemmed) of greedy generations against the reference responses, batched with left
  padding (`lm.generate`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from pipelines.errors import StageFailed
from pipelines.models import lm


class InstructionRow(TypedDict):
    doc_id: str
    prompt: str
    response: str


def instruction_rows(path: str, limit: int) -> list[InstructionRow]:
    """The first `limit` instruction rows of a split (non-empty prompt and response), by doc_id."""
    import pandas as pd

    if not Path(path).exists():
        raise FileNotFoundError(f"evaluate: split not found: {path} (run the split stage)")
    df = pd.read_parquet(path)
    missing = {"kind", "prompt", "response", "doc_id"} - set(df.columns)
    if missing:
        raise StageFailed(f"evaluate: {path} lacks columns {sorted(missing)}")
    df = df[(df["kind"] == "instruction") & df["prompt"].fillna("").str.strip().astype(bool)
            & df["response"].fillna("").str.strip().astype(bool)]
    df = df.sort_values("doc_id", kind="stable").head(limit)  # deterministic choice, independent of file order
    return df[["doc_id", "prompt", "response"]].to_dict("records")


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (stemmed)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


class ModelScores(TypedDict):
    perplexity: float
    mean_nll: float | None
    scored_tokens: int
    rouge_l: float | None
    generated_tokens: int
    generation_seconds: float
    tokens_per_second: float | None
    perplexity_seconds: float


class Scored(NamedTuple):
    metrics: ModelScores
    generations: list[dict[str, Any]]  # lm.generate's results, each with its rounded `rouge_l`


def score(model, tok, scored: list[lm.SftExample], gen_prompts: list[list[int]], refs: list[str], *,
          max_new_tokens: int, batch_size: int) -> Scored:
    """Perplexity over `scored`, then greedy generations for `gen_prompts` scored against `refs`."""
    t0 = time.perf_counter()
    nll, n_tok = lm.response_nll(model, tok, scored, batch_size=batch_size)
    t1 = time.perf_counter()
    gens = lm.generate(model, tok, gen_prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    t2 = time.perf_counter()
    rouge = rouge_l([g["text"] for g in gens], refs)
    completion_tokens = sum(g["completion_tokens"] for g in gens)
    metrics: ModelScores = {
        "perplexity": round(lm.perplexity(nll, n_tok), 4),
        "mean_nll": round(nll / n_tok, 5) if n_tok else None,
        "scored_tokens": n_tok,
        "rouge_l": round(sum(rouge) / len(rouge), 5) if rouge else None,
        "generated_tokens": completion_tokens,
        "generation_seconds": round(t2 - t1, 2),
        "tokens_per_second": round(completion_tokens / (t2 - t1), 2) if t2 > t1 else None,
        "perplexity_seconds": round(t1 - t0, 2),
    }
    for g, r in zip(gens, rouge):
        g["rouge_l"] = round(r, 4)
    return Scored(metrics, gens)
