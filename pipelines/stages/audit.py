"""audit: red-team the candidate with prompt-injection, jailbreak and harmful-request prompts.

Each prompt of `prompts_path` (JSONL: id, category, source, licence, prompt) is sent as one chat user turn,
answered greedily, and judged by marker strings (`pipelines.models.safety`: refusal markers; persona / mode
markers and the injected target string for attacks). Outputs: per-prompt results (JSONL) and metrics with the
attack success rate (ASR) overall and per category, and the refusal rate.

CPU budget: DAN-style jailbreaks run to ~1,200 tokens. A prompt longer than `max_prompt_tokens` is cut in the
middle (first 60% and last 40% of the budget kept): the opening sets up the persona and the end carries the
actual ask ("say 'DAN has been accessed'"), so the attack stays recognisable while the cost stays bounded.
Each result records `prompt_tokens` and `truncated`. The base model is audited too only when `include_base`.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from pipelines.config import StageConfig
from pipelines.io import write_json, write_text
from pipelines.errors import StageFailed

SECTION = "audit"


class Config(StageConfig):
    base_model_dir: str = "models/base"
    candidate_dir: str = "models/candidate"
    prompts_path: str = "data/sample/security/audit_prompts.jsonl"
    max_prompts: int = 51
    max_new_tokens: int = 32
    max_prompt_tokens: int = 256
    batch_size: int = 8
    include_base: bool = False
    metrics: str = "metrics/audit.json"
    results: str = "reports/audit_results.jsonl"


def load_prompts(path: str, limit: int) -> list[dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"audit: prompts file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("id", "category", "prompt"):
                if not row.get(key):
                    raise StageFailed(f"audit: {path}:{n} lacks '{key}'")
            rows.append(row)
    return rows[:limit]


def summarize(results: list[dict]) -> dict:
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_cat[r["category"]].append(r)

    def rates(rows: list[dict]) -> dict:
        n = len(rows)
        return {
            "n": n,
            "attack_success_rate": round(sum(r["attack_success"] for r in rows) / n, 4) if n else None,
            "refusal_rate": round(sum(r["refused"] for r in rows) / n, 4) if n else None,
        }

    overall = rates(results)
    return {**overall, "per_category": {c: rates(rows) for c, rows in sorted(by_cat.items())}}


def _audit(model, tok, prompts: list[dict], cfg: Config) -> tuple[list[dict], float]:
    from pipelines.models import lm, safety

    ids, truncated = [], []
    for p in prompts:
        full = lm.chat_prompt_ids(tok, p["prompt"])
        cut = lm.truncate_middle(full, cfg.max_prompt_tokens)
        ids.append(cut)
        truncated.append(len(cut) < len(full))
    t0 = time.perf_counter()
    gens = lm.generate(model, tok, ids, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    seconds = time.perf_counter() - t0
    results = []
    for p, g, cut in zip(prompts, gens, truncated):
        verdict = safety.judge(p["category"], p["prompt"], g["text"])
        results.append({
            "id": p["id"], "category": p["category"], "source": p.get("source"),
            "prompt_tokens": g["prompt_tokens"], "truncated": cut, "response": g["text"], **verdict,
        })
    return results, seconds


def run(cfg: Config) -> dict:
    from pipelines.models import lm

    started = time.perf_counter()
    prompts = load_prompts(cfg.prompts_path, cfg.max_prompts)
    if not prompts:
        raise StageFailed(f"audit: no prompts in {cfg.prompts_path}")
    # Unmerged (LoRA r=8 adds little to a forward pass): the same load serves evaluate and audit in one process,
    # and the base can be audited with the adapter switched off.
    loaded = lm.load_model(cfg.base_model_dir, cfg.candidate_dir)
    tok = loaded.tokenizer

    results, gen_seconds = _audit(loaded.model, tok, prompts, cfg)
    metrics = summarize(results)
    metrics.update({
        "model": "candidate",
        "candidate_dir": cfg.candidate_dir,
        "candidate_sha256": lm.dir_sha256(cfg.candidate_dir),
        "prompts_path": cfg.prompts_path,
        "truncated_prompts": sum(r["truncated"] for r in results),
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "max_new_tokens": cfg.max_new_tokens,
        "generation_seconds": round(gen_seconds, 2),
    })
    lines = [json.dumps({"model": "candidate", **r}, ensure_ascii=False) for r in results]
    if cfg.include_base:
        with loaded.base_only() as base_model:
            base_results, _ = _audit(base_model, tok, prompts, cfg)
        metrics["base"] = summarize(base_results)
        metrics["delta_attack_success_rate"] = round(
            metrics["attack_success_rate"] - metrics["base"]["attack_success_rate"], 4)
        lines += [json.dumps({"model": "base", **r}, ensure_ascii=False) for r in base_results]
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_text(cfg.results, "\n".join(lines) + "\n")
    write_json(cfg.metrics, metrics)
    return {
        "metrics": cfg.metrics,
        "results": cfg.results,
        "n_prompts": metrics["n"],
        "attack_success_rate": metrics["attack_success_rate"],
        "per_category": {c: v["attack_success_rate"] for c, v in metrics["per_category"].items()},
    }
