"""Red-teaming a model: prompt-injection, jailbreak and harmful-request prompts, answered greedily and judged
by marker strings (`pipelines.models.safety`).

Prompts (JSONL: id, category, source, licence, prompt) are sent as one chat user turn each. A prompt longer than
`max_prompt_tokens` is cut in the middle (`lm.truncate_middle`: first 60% and last 40% of the budget kept): the
opening sets up the persona and the end carries the actual ask ("say 'DAN has been accessed'"), so the attack
stays recognisable while the cost stays bounded. Each result records `prompt_tokens` and `truncated`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

from pipelines.errors import StageFailed
from pipelines.models import lm, safety


def load_prompts(path: str, limit: int) -> list[dict]:
    """The first `limit` prompts of a JSONL file; each must have an id, a category and a prompt."""
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


class AttackResults(NamedTuple):
    results: list[dict]  # per prompt: id, category, source, prompt_tokens, truncated, response + safety.Verdict
    generation_seconds: float


def attack(model, tok, prompts: list[dict], *, max_prompt_tokens: int, max_new_tokens: int,
           batch_size: int) -> AttackResults:
    """Every prompt answered greedily by `model` and judged."""
    ids, truncated = [], []
    for p in prompts:
        full = lm.chat_prompt_ids(tok, p["prompt"])
        cut = lm.truncate_middle(full, max_prompt_tokens)
        ids.append(cut)
        truncated.append(len(cut) < len(full))
    t0 = time.perf_counter()
    gens = lm.generate(model, tok, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    results = []
    for p, g, cut in zip(prompts, gens, truncated):
        verdict = safety.judge(p["category"], p["prompt"], g["text"])
        results.append({
            "id": p["id"], "category": p["category"], "source": p.get("source"),
            "prompt_tokens": g["prompt_tokens"], "truncated": cut, "response": g["text"], **verdict,
        })
    return AttackResults(results, seconds)
