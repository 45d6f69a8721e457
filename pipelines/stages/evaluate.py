"""evaluate: base model vs LoRA candidate on held-out data.

- Perplexity on the eval split's instruction rows: response tokens only (the prompt is chat-formatted and
  masked out), token-weighted over up to `max_eval_examples` rows.
- ROUGE-L F1 (rouge-score, stemmed) of greedy generations against the reference responses on the test split,
  up to `max_generation_examples` rows, batched with left padding.

Both models come from ONE load: the candidate is the base with the adapter on top, and base numbers are computed
with the adapter disabled. Writes a metrics JSON {base, candidate, delta, n_examples, ...} and a self-contained
HTML report, both atomically.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from pipelines.config import StageConfig
from pipelines.io import write_json, write_text
from pipelines.errors import StageFailed

SECTION = "evaluate"


class Config(StageConfig):
    base_model_dir: str = "models/base"
    candidate_dir: str = "models/candidate"
    eval_path: str = "data/splits/eval.parquet"
    test_path: str = "data/splits/test.parquet"
    max_eval_examples: int = 32
    max_generation_examples: int = 8
    max_new_tokens: int = 48
    max_length: int = 384          # prompt + response tokens scored per example (prompt cut in the middle)
    max_prompt_tokens: int = 256   # generation prompts longer than this are cut in the middle
    batch_size: int = 8
    report_examples: int = 4       # generations shown side by side in the HTML report
    metrics: str = "metrics/evaluate.json"
    report: str = "reports/evaluate.html"


def _instruction_rows(path: str, limit: int) -> list[dict]:
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


def _rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def _score(model, tok, scored, gen_prompts, refs, cfg: Config) -> tuple[dict, list[dict]]:
    from pipelines.models import lm

    t0 = time.perf_counter()
    nll, n_tok = lm.response_nll(model, tok, scored, batch_size=cfg.batch_size)
    t1 = time.perf_counter()
    gens = lm.generate(model, tok, gen_prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    t2 = time.perf_counter()
    rouge = _rouge_l([g["text"] for g in gens], refs)
    completion_tokens = sum(g["completion_tokens"] for g in gens)
    metrics = {
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
    return metrics, gens


def _report_html(metrics: dict, examples: list[dict]) -> str:
    def cell(v):
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    keys = ["perplexity", "rouge_l", "mean_nll", "scored_tokens", "generated_tokens", "tokens_per_second"]
    rows = "".join(
        f"<tr><th>{k}</th><td>{cell(metrics['base'].get(k))}</td><td>{cell(metrics['candidate'].get(k))}</td>"
        f"<td>{cell(metrics['delta'].get(k, ''))}</td></tr>" for k in keys
    )
    ex = "".join(
        "<tr>"
        f"<td><pre>{html.escape(e['prompt'])}</pre></td><td><pre>{html.escape(e['reference'])}</pre></td>"
        f"<td><pre>{html.escape(e['base'])}</pre><small>ROUGE-L {e['base_rouge_l']}</small></td>"
        f"<td><pre>{html.escape(e['candidate'])}</pre><small>ROUGE-L {e['candidate_rouge_l']}</small></td>"
        "</tr>" for e in examples
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
pre{{white-space:pre-wrap;max-width:36em;margin:0}}</style></head><body>
<h1>Evaluation: base vs candidate</h1>
<p>Candidate <code>{html.escape(metrics['candidate_dir'])}</code> (sha256 {html.escape(metrics['candidate_sha256'][:12])}),
base <code>{html.escape(metrics['base_model_dir'])}</code>.
Perplexity on {metrics['n_examples']['perplexity']} eval instruction rows (response tokens only);
ROUGE-L of greedy generations (max {metrics['max_new_tokens']} new tokens) on {metrics['n_examples']['generation']} test rows.</p>
<table><tr><th>metric</th><th>base</th><th>candidate</th><th>delta</th></tr>{rows}</table>
<h2>Example generations</h2>
<table><tr><th>prompt</th><th>reference</th><th>base</th><th>candidate</th></tr>{ex}</table>
</body></html>
"""


def run(cfg: Config) -> dict:
    from pipelines.models import lm

    started = time.perf_counter()
    eval_rows = _instruction_rows(cfg.eval_path, cfg.max_eval_examples)
    test_rows = _instruction_rows(cfg.test_path, cfg.max_generation_examples)
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

    with loaded.base_only() as base_model:
        base_metrics, base_gens = _score(base_model, tok, scored, gen_prompts, refs, cfg)
    cand_metrics, cand_gens = _score(loaded.model, tok, scored, gen_prompts, refs, cfg)

    delta = {
        k: round(cand_metrics[k] - base_metrics[k], 5)
        for k in ("perplexity", "rouge_l", "mean_nll", "tokens_per_second")
        if isinstance(cand_metrics.get(k), (int, float)) and isinstance(base_metrics.get(k), (int, float))
    }
    examples = [
        {
            "doc_id": r["doc_id"], "prompt": r["prompt"], "reference": r["response"],
            "base": b["text"], "candidate": c["text"], "base_rouge_l": b["rouge_l"], "candidate_rouge_l": c["rouge_l"],
        }
        for r, b, c in zip(test_rows, base_gens, cand_gens)
    ]
    metrics = {
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
