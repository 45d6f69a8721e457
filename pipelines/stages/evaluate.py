"""evaluate: base model vs LoRA candidate on held-out data.

- Perplexity on the eval split's instruction rows: response tokens only (the prompt is chat-formatted and
  masked out), token-weighted over up to `max_eval_examples` rows.
- ROUGE-L F1 (rouge-score, stemmed) of greedy generations against the reference responses on the test split,
  up to `max_generation_examples` rows, batched with left padding.
(Both scores: `pipelines.models.evaluation`.)

Both models come from ONE load: the candidate is the base with the adapter on top, and base numbers are computed
with the adapter disabled. Writes a metrics JSON {base, candidate, delta, n_examples, ...} and a self-contained
HTML report (`pipelines/templates/evaluate.html.j2`), both atomically.
"""
from __future__ import annotations

import html
import time
from typing import TypedDict

from markupsafe import Markup

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import write_json, write_text
from pipelines.models import evaluation, lm
from pipelines.models.evaluation import ModelScores
from pipelines.reports import render

SECTION = "evaluate"
TEMPLATE = "evaluate.html.j2"
REPORT_KEYS = ("perplexity", "rouge_l", "mean_nll", "scored_tokens", "generated_tokens", "tokens_per_second")


class Config(StageConfig):
    base_model_dir: str
    candidate_dir: str
    eval_path: str
    test_path: str
    max_eval_examples: int
    max_generation_examples: int
    max_new_tokens: int
    max_length: int          # prompt + response tokens scored per example (prompt cut in the middle)
    max_prompt_tokens: int   # generation prompts longer than this are cut in the middle
    batch_size: int
    report_examples: int     # generations shown side by side in the HTML report
    metrics: str
    report: str


class ExampleCounts(TypedDict):
    perplexity: int
    generation: int


class EvaluateMetrics(TypedDict):
    """metrics/evaluate.json."""

    base: ModelScores
    candidate: ModelScores
    delta: dict[str, float]  # candidate - base, for the numeric metrics both have
    n_examples: ExampleCounts
    max_new_tokens: int
    base_model_dir: str
    candidate_dir: str
    candidate_sha256: str
    load_seconds: float
    seconds: float


class Example(TypedDict):
    doc_id: str
    prompt: str
    reference: str
    base: str
    candidate: str
    base_rouge_l: float
    candidate_rouge_l: float


class EvaluateReport(TypedDict):
    metrics: str
    report: str
    base_perplexity: float
    candidate_perplexity: float
    base_rouge_l: float | None
    candidate_rouge_l: float | None
    n_examples: ExampleCounts


def _escaped(text: str) -> Markup:
    """`text` escaped by html.escape (&#x27; and &quot;, as the report always had), marked safe for the template."""
    return Markup(html.escape(text))


def _cell(value) -> Markup:
    return _escaped(f"{value:.4g}" if isinstance(value, float) else str(value))


def _report_html(metrics: EvaluateMetrics, examples: list[Example]) -> str:
    rows = [{"metric": k, "base": _cell(metrics["base"].get(k)), "candidate": _cell(metrics["candidate"].get(k)),
             "delta": _cell(metrics["delta"].get(k, ""))} for k in REPORT_KEYS]
    shown = [{**e, **{k: _escaped(e[k]) for k in ("prompt", "reference", "base", "candidate")}} for e in examples]
    page = render(
        TEMPLATE,
        candidate_dir=_escaped(metrics["candidate_dir"]),
        candidate_sha256=_escaped(metrics["candidate_sha256"][:12]),
        base_model_dir=_escaped(metrics["base_model_dir"]),
        n_perplexity=metrics["n_examples"]["perplexity"],
        n_generation=metrics["n_examples"]["generation"],
        max_new_tokens=metrics["max_new_tokens"],
        rows=rows,
        examples=shown,
    )
    return page + "\n"  # the environment drops the template's final newline; the page ends with one


def run(cfg: Config) -> EvaluateReport:
    started = time.perf_counter()
    eval_rows = evaluation.instruction_rows(cfg.eval_path, cfg.max_eval_examples)
    test_rows = evaluation.instruction_rows(cfg.test_path, cfg.max_generation_examples)
    if not eval_rows or not test_rows:
        raise StageFailed(
            f"evaluate: no instruction rows to score (eval: {len(eval_rows)} in {cfg.eval_path}, "
            f"test: {len(test_rows)} in {cfg.test_path})"
        )
    loaded = lm.load_model(cfg.base_model_dir, cfg.candidate_dir)
    tok = loaded.tokenizer
    load_seconds = time.perf_counter() - started
    scored = [lm.build_sft_example(tok, r["prompt"], r["response"], cfg.max_length) for r in eval_rows]
    gen_prompts = [lm.truncate_middle(lm.chat_prompt_ids(tok, r["prompt"]), cfg.max_prompt_tokens) for r in test_rows]
    refs = [r["response"] for r in test_rows]

    def score(model) -> evaluation.Scored:
        return evaluation.score(model, tok, scored, gen_prompts, refs, max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.batch_size)

    with loaded.base_only() as base_model:
        base_metrics, base_gens = score(base_model)
    cand_metrics, cand_gens = score(loaded.model)

    delta = {
        k: round(cand_metrics[k] - base_metrics[k], 5)
        for k in ("perplexity", "rouge_l", "mean_nll", "tokens_per_second")
        if isinstance(cand_metrics.get(k), (int, float)) and isinstance(base_metrics.get(k), (int, float))
    }
    examples: list[Example] = [
        {
            "doc_id": r["doc_id"], "prompt": r["prompt"], "reference": r["response"],
            "base": b["text"], "candidate": c["text"], "base_rouge_l": b["rouge_l"], "candidate_rouge_l": c["rouge_l"],
        }
        for r, b, c in zip(test_rows, base_gens, cand_gens)
    ]
    metrics: EvaluateMetrics = {  # type: ignore[typeddict-item]  (seconds: set last, below)
        "base": base_metrics,
        "candidate": cand_metrics,
        "delta": delta,
        "n_examples": {"perplexity": len(eval_rows), "generation": len(test_rows)},
        "max_new_tokens": cfg.max_new_tokens,
        "base_model_dir": cfg.base_model_dir,
        "candidate_dir": cfg.candidate_dir,
        "candidate_sha256": lm.dir_sha256(cfg.candidate_dir),
        "load_seconds": round(load_seconds, 2),
    }
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_text(cfg.report, _report_html(metrics, examples[: cfg.report_examples]))
    write_json(cfg.metrics, metrics)
    return {
        "metrics": cfg.metrics,
        "report": cfg.report,
        "base_perplexity": base_metrics["perplexity"],
        "candidate_perplexity": cand_metrics["perplexity"],
        "base_rouge_l": base_metrics["rouge_l"],
        "candidate_rouge_l": cand_metrics["rouge_l"],
        "n_examples": metrics["n_examples"],
    }
