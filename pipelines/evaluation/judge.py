"""Optional LLM-as-judge: pairwise candidate vs reference through any OpenAI-compatible chat endpoint.

Each example is judged twice with the answers' positions swapped (A = candidate, then A = reference), which
cancels a judge's position bias. Tie rule: the candidate wins an example only when both orders prefer it, loses
only when both prefer the reference; anything else (disagreement, a TIE verdict, an unparsable reply) is a tie.
Score per example: win 1, tie 0.5, loss 0; the preference rate is their mean (0.5 = no difference).
Off by default (`evaluate.judge.enabled`): a 135M judge means nothing; point it at a real model's endpoint.
"""
from __future__ import annotations

import json
import os
import re
import urllib.request
from typing import Literal, Sequence, TypedDict

from pydantic import Field

from pipelines.config import StageConfig

JUDGE_PROMPT = """You compare two answers to the same request. Reply with exactly one word: A if answer A is better, \
B if answer B is better, TIE if they are equally good.

Request:
{prompt}

Answer A:
{a}

Answer B:
{b}

Verdict (A, B or TIE):"""


class JudgeConfig(StageConfig):
    enabled: bool
    base_url: str | None  # http://host:port/v1 of an OpenAI-compatible API
    model: str | None
    api_key_env: str | None  # the environment variable holding the key (never the key itself)
    tasks: list[str]  # task names whose outputs are judged (generation-style tasks)
    max_examples: int = Field(ge=1)
    timeout_s: float = Field(gt=0)


Verdict = Literal["A", "B", "TIE", "INVALID"]


class Judged(TypedDict):
    task: str
    id: str
    first: Verdict  # A = candidate
    second: Verdict  # A = reference
    outcome: Literal["win", "loss", "tie"]
    score: float


def parse_verdict(text: str) -> Verdict:
    m = re.search(r"\b(TIE|A|B)\b", text.strip().upper())
    return m.group(1) if m else "INVALID"  # type: ignore[return-value]


def ask(cfg: JudgeConfig, prompt: str) -> str:
    body = json.dumps({"model": cfg.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                       "max_tokens": 4}).encode()
    headers = {"Content-Type": "application/json"}
    if cfg.api_key_env and os.environ.get(cfg.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[cfg.api_key_env]}"
    req = urllib.request.Request(f"{str(cfg.base_url).rstrip('/')}/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:  # noqa: S310 (configured endpoint)
        payload = json.loads(resp.read())
    return str(payload["choices"][0]["message"]["content"])


def outcome(first: Verdict, second: Verdict) -> tuple[str, float]:
    """The tie rule: (first: A = candidate, second: A = reference)."""
    if first == "A" and second == "B":
        return "win", 1.0
    if first == "B" and second == "A":
        return "loss", 0.0
    return "tie", 0.5


def judge_pairs(cfg: JudgeConfig, items: Sequence[tuple[str, str, str, str, str]]) -> list[Judged]:
    """items: (task, id, prompt, candidate answer, reference answer)."""
    out: list[Judged] = []
    for task, ex_id, prompt, cand, ref in items:
        first = parse_verdict(ask(cfg, JUDGE_PROMPT.format(prompt=prompt, a=cand, b=ref)))
        second = parse_verdict(ask(cfg, JUDGE_PROMPT.format(prompt=prompt, a=ref, b=cand)))
        result, score = outcome(first, second)
        out.append({"task": task, "id": ex_id, "first": first, "second": second, "outcome": result,  # type: ignore[typeddict-item]
                    "score": score})
    return out
