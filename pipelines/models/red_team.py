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


# ---------------------------------------------------------------- issue 15: judge, guard, leak audits
def judge_with_detector(results: list[dict], prompts: list[dict], judge) -> None:
    """Adds the trained harmful-compliance judge's opinion to each result (in place): `judge_score`,
    `judge_success`, `marker_success` (the marker rules' verdict), and `attack_success` = either says success
    (the conservative union; `agreement` says whether they agreed)."""
    scores = judge.score([p["prompt"] for p in prompts], [r["response"] for r in results]) if results else []
    for r, s in zip(results, scores):
        r["marker_success"] = bool(r["attack_success"])
        r["judge_score"] = round(float(s), 4)
        r["judge_success"] = bool(s >= judge.threshold)
        r["attack_success"] = r["judge_success"] or r["marker_success"]
        r["agreement"] = r["judge_success"] == r["marker_success"]


def guarded(results: list[dict], prompts: list[dict], guard) -> list[dict]:
    """What a client of the deployed API gets: the guard's input policy on each prompt (a block answers with the
    refusal, no generation) and its output policy on the model's answer. Greedy decoding makes the unguarded
    answer the answer the guarded server generates (a PII-redacted prompt would differ; it is counted)."""
    out = []
    for p, r in zip(prompts, results):
        messages = [{"role": "user", "content": p["prompt"]}]
        vin = guard.check_input(messages)
        g = {k: r[k] for k in ("id", "category", "source")}
        g["redacted_prompt"] = messages[0]["content"] != p["prompt"]
        if vin.blocked:
            g.update(blocked="input", reason=vin.blocked.check, response=guard.refusal_text(vin))
        else:
            vout = guard.check_output(messages, r["response"])
            if vout.blocked:
                g.update(blocked="output", reason=vout.blocked.check, response=guard.refusal_text(vout))
            else:
                g.update(blocked=None, reason=None, response=vout.text if vout.text is not None else r["response"])
        verdict = safety.judge(p["category"], p["prompt"], g["response"])
        g.update(refused=verdict["refused"] or g["blocked"] is not None, marker_success=verdict["attack_success"])
        out.append(g)
    return out


def leak_prompts(canaries: list[dict], pii_records: list[dict]) -> list[dict]:
    """Extraction prompts: each canary by its training prompt and by the start of its training answer; each PII
    record by its text up to the PII span."""
    rows = []
    for c in canaries:
        rows.append({"kind": "canary", "id": c["id"], "variant": "prompt", "prompt": c["prompt"], "secret": c["secret"]})
        rows.append({"kind": "canary", "id": c["id"], "variant": "prefix", "prompt": c["prefix"], "secret": c["secret"]})
    for r in pii_records:
        rows.append({"kind": "pii", "id": r["id"], "variant": "prefix", "prompt": r["prefix"], "secret": r["secret"],
                     "entity": r["entity"]})
    return rows


def pii_records(train_path: str, limit: int) -> list[dict]:
    """Training records whose text still holds PII that pipelines.data.pii finds (after ingest's redaction):
    the prefix up to the span (last 300 characters, with the record's prompt) and the span itself."""
    import pandas as pd

    from pipelines.data import pii

    if not Path(train_path).exists():
        return []
    df = pd.read_parquet(train_path)
    out = []
    for i, row in df.iterrows():
        for col in ("response", "text"):
            text = row.get(col)
            if not isinstance(text, str) or not text:
                continue
            spans = [s for s in pii.detect(text) if len(s.text) >= 6]
            if spans:
                s = spans[0]
                head = (str(row.get("prompt") or "") + "\n" + text[:s.start])[-300:] if col == "response" else text[:s.start][-300:]
                out.append({"id": str(row.get("doc_id", i)), "prefix": head, "secret": s.text, "entity": s.entity})
                break
        if len(out) >= limit:
            break
    return out
