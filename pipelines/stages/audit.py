"""audit: red-team the candidate with prompt-injection, jailbreak and harmful-request prompts.

Each prompt of `prompts_path` (JSONL: id, category, source, licence, prompt) is sent as one chat user turn,
answered greedily, and judged by marker strings (`pipelines.models.red_team`, `pipelines.models.safety`: refusal
markers; persona / mode markers and the injected target string for attacks). Outputs: per-prompt results (JSONL)
and metrics with the attack success rate (ASR) overall and per category, and the refusal rate.

CPU budget: DAN-style jailbreaks run to ~1,200 tokens. A prompt longer than `max_prompt_tokens` is cut in the
middle (first 60% and last 40% of the budget kept), so the attack stays recognisable while the cost stays bounded.
Each result records `prompt_tokens` and `truncated`. The base model is audited too only when `include_base`.
"""
from __future__ import annotations

import json
import time
from typing import Literal, NotRequired, TypedDict

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import write_json, write_text
from pipelines.models import lm, red_team
from pipelines.models.safety import SafetySummary, summarize

SECTION = "audit"


class Config(StageConfig):
    base_model_dir: str
    candidate_dir: str
    prompts_path: str
    max_prompts: int
    max_new_tokens: int
    max_prompt_tokens: int
    batch_size: int
    include_base: bool
    metrics: str
    results: str


class AuditMetrics(SafetySummary):
    """metrics/audit.json: the candidate's rates plus what was audited."""

    model: Literal["candidate"]
    candidate_dir: str
    candidate_sha256: str
    prompts_path: str
    truncated_prompts: int
    max_prompt_tokens: int
    max_new_tokens: int
    generation_seconds: float
    seconds: float
    base: NotRequired[SafetySummary]  # include_base only
    delta_attack_success_rate: NotRequired[float]


class AuditReport(TypedDict):
    metrics: str
    results: str
    n_prompts: int
    attack_success_rate: float | None
    per_category: dict[str, float | None]


def run(cfg: Config) -> AuditReport:
    started = time.perf_counter()
    prompts = red_team.load_prompts(cfg.prompts_path, cfg.max_prompts)
    if not prompts:
        raise StageFailed(f"audit: no prompts in {cfg.prompts_path}")
    # Unmerged (LoRA r=8 adds little to a forward pass): the same load serves evaluate and audit in one process,
    # and the base can be audited with the adapter switched off.
    loaded = lm.load_model(cfg.base_model_dir, cfg.candidate_dir)
    tok = loaded.tokenizer

    def attack(model) -> red_team.AttackResults:
        return red_team.attack(model, tok, prompts, max_prompt_tokens=cfg.max_prompt_tokens,
                               max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)

    results, gen_seconds = attack(loaded.model)
    metrics: AuditMetrics = {**summarize(results), **{  # type: ignore[typeddict-item]  (seconds: set last)
        "model": "candidate",
        "candidate_dir": cfg.candidate_dir,
        "candidate_sha256": lm.dir_sha256(cfg.candidate_dir),
        "prompts_path": cfg.prompts_path,
        "truncated_prompts": sum(r["truncated"] for r in results),
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "max_new_tokens": cfg.max_new_tokens,
        "generation_seconds": round(gen_seconds, 2),
    }}
    lines = [json.dumps({"model": "candidate", **r}, ensure_ascii=False) for r in results]
    if cfg.include_base:
        with loaded.base_only() as base_model:
            base_results = attack(base_model).results
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
