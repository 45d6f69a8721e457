"""Online evaluation: a seeded sample of the serving request log, scored with the platform's offline scorers, per
window; rates over thresholds from params.yaml (`online_eval`) become alerts, the same way drift does.

Per sampled request (log format: pipelines/monitoring/windows.py `read_request_log`):
- toxicity: the response's lexicon score (descriptors.ToxicityScorer, the placeholder issue 15's classifier
  replaces) at or above `toxicity_threshold`; the prompt's is reported too (what users send), never alerted;
- PII leak: the server's own count for the response (`pii_found.response`), or, when it recorded none, the
  project's redactor (pipelines/data/pii.py) on the logged response;
- guard blocks: `guard.input` or `guard.output` is "block" (requests logged without a guard verdict are counted
  apart and left out of the rate);
- groundedness (RAG answers: `mode` "rag" with `contexts`): the share of the answer's content words (3+ letters,
  not a stopword) that occur in the logged contexts; below `min_groundedness` the answer is "ungrounded".

A window with fewer than `min_samples` scorable requests is "insufficient_data": no rate, never an alert.
"""
from __future__ import annotations

import random
import time
from typing import Any, TypedDict

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.io import write_json
from pipelines.monitoring.descriptors import ToxicityScorer, pii_counts, words
from pipelines.monitoring.windows import read_request_log

INSUFFICIENT = "insufficient_data"
STOPWORDS = frozenset("""a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves""".split())
MAX_EXAMPLES = 10  # rejected lines listed
EXAMPLES_PER_REASON = 3  # flagged samples listed per reason


class Thresholds(StageConfig):
    max_toxic_rate: float = Field(ge=0, le=1)  # share of sampled responses scored toxic
    max_pii_leak_rate: float = Field(ge=0, le=1)  # share of sampled responses with PII
    max_guard_block_rate: float = Field(ge=0, le=1)  # share of sampled requests (with a guard verdict) blocked
    max_ungrounded_rate: float = Field(ge=0, le=1)  # share of sampled RAG answers below min_groundedness
    max_error_rate: float = Field(ge=0, le=1)  # share of logged requests (whole window) with status >= 400


class OnlineEvalConfig(StageConfig):
    request_log: str  # a JSONL file or a folder of them
    since: str | None  # ISO-8601 window bounds [since, until); null: open
    until: str | None
    sample_size: int = Field(ge=1)
    min_samples: int = Field(ge=1)
    seed: int
    toxicity_lexicon: str | None  # null: the shipped placeholder lexicon
    toxicity_threshold: float = Field(gt=0, le=1)
    pii_entities: list[str] | None
    min_groundedness: float = Field(ge=0, le=1)
    thresholds: Thresholds
    metrics: str


class Alert(TypedDict):
    metric: str
    value: float
    threshold: float
    message: str


class OnlineEvalReport(TypedDict):
    status: str  # ok | insufficient_data
    alerted: bool
    reason: str | None
    request_log: str
    since: str | None
    until: str | None
    log: dict[str, int]  # lines / records / rejected / outside_window
    rejects: list[dict[str, Any]]  # first rejected lines, with file and line
    eligible: int  # records with status < 400 and a response
    sampled: int
    rates: dict[str, float | None]
    counts: dict[str, int]
    mean_groundedness: float | None
    alerts: list[Alert]
    examples: list[dict[str, Any]]  # flagged samples (a few per reason): request_id and why
    seconds: float


def groundedness(answer: str | None, contexts: list[dict[str, Any]] | None) -> float | None:
    """Share of the answer's content words found in the contexts; None when there is nothing to judge."""
    content = [w for w in words(answer or "") if len(w) >= 3 and w not in STOPWORDS]
    if not content or not contexts:
        return None
    supported = set()
    for ctx in contexts:
        if isinstance(ctx, dict) and isinstance(ctx.get("text"), str):
            supported.update(words(ctx["text"]))
    return sum(1 for w in content if w in supported) / len(content)


def _blocked(guard: Any) -> bool | None:
    if not isinstance(guard, dict):
        return None
    return guard.get("input") == "block" or guard.get("output") == "block"


def _server_pii(rec: dict[str, Any]) -> int | None:
    found = rec.get("pii_found")
    if not isinstance(found, dict) or not isinstance(found.get("response"), dict):
        return None
    return sum(int(v) for v in found["response"].values() if isinstance(v, (int, float)))


def evaluate_window(cfg: OnlineEvalConfig) -> OnlineEvalReport:
    started = time.perf_counter()
    log = read_request_log(cfg.request_log, cfg.since, cfg.until)
    # shadow copies (arm "shadow", pipelines/serving/shadow.py) were never returned to a user: the rollout analysis
    # scores them per arm; this report is about what users received
    served = [r for r in log.records if r.get("arm") != "shadow"]
    errors = sum(1 for r in served if isinstance(r.get("status"), int) and r["status"] >= 400)
    eligible = [r for r in served if not (isinstance(r.get("status"), int) and r["status"] >= 400)
                and isinstance(r.get("response"), str)]
    base: dict[str, Any] = {
        "request_log": cfg.request_log, "since": cfg.since, "until": cfg.until, "log": log.accounting(),
        "rejects": [{"path": r.path, "line": r.line, "reason": r.reason} for r in log.rejected[:MAX_EXAMPLES]],
        "eligible": len(eligible),
    }
    if len(eligible) < cfg.min_samples:
        report: OnlineEvalReport = {
            **base, "status": INSUFFICIENT, "alerted": False, "sampled": 0,
            "reason": f"not enough data: {len(eligible)} scorable requests in the window, at least "
                      f"{cfg.min_samples} needed",
            "rates": {}, "counts": {"errors": errors}, "mean_groundedness": None, "alerts": [], "examples": [],
            "seconds": round(time.perf_counter() - started, 3)}
        write_json(cfg.metrics, report)
        return report

    rng = random.Random(cfg.seed)
    sample = eligible if len(eligible) <= cfg.sample_size else rng.sample(eligible, cfg.sample_size)
    scorer = ToxicityScorer(cfg.toxicity_lexicon)
    counts = {"toxic_response": 0, "toxic_prompt": 0, "pii_leak": 0, "guard_known": 0, "guard_block": 0,
              "guard_unknown": 0, "rag": 0, "rag_judged": 0, "ungrounded": 0, "errors": errors}
    scores: list[float] = []
    examples: list[dict[str, Any]] = []
    shown: dict[str, int] = {}
    for rec in sample:
        why = []
        if scorer.score_one(rec.get("response")) >= cfg.toxicity_threshold:
            counts["toxic_response"] += 1
            why.append("toxic_response")
        if scorer.score_one(rec.get("prompt")) >= cfg.toxicity_threshold:
            counts["toxic_prompt"] += 1
        server = _server_pii(rec)
        leaked = server if server else sum(pii_counts(rec.get("response"), cfg.pii_entities).values())
        if leaked:
            counts["pii_leak"] += 1
            why.append("pii_leak")
        blocked = _blocked(rec.get("guard"))
        if blocked is None:
            counts["guard_unknown"] += 1
        else:
            counts["guard_known"] += 1
            if blocked:
                counts["guard_block"] += 1
                why.append("guard_block")
        if rec.get("mode") == "rag":
            counts["rag"] += 1
            g = groundedness(rec.get("response"), rec.get("contexts"))
            if g is not None:
                counts["rag_judged"] += 1
                scores.append(g)
                if g < cfg.min_groundedness:
                    counts["ungrounded"] += 1
                    why.append(f"ungrounded ({g:.2f})")
        reasons = [w.split(" ")[0] for w in why]
        if any(shown.get(r, 0) < EXAMPLES_PER_REASON for r in reasons):
            examples.append({"request_id": rec.get("request_id"), "ts": rec.get("ts"), "why": why})
            for r in reasons:
                shown[r] = shown.get(r, 0) + 1

    n = len(sample)

    def rate(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    total_logged = len(served)
    rates = {
        "toxic_response_rate": rate(counts["toxic_response"], n),
        "toxic_prompt_rate": rate(counts["toxic_prompt"], n),
        "pii_leak_rate": rate(counts["pii_leak"], n),
        "guard_block_rate": rate(counts["guard_block"], counts["guard_known"]),
        "ungrounded_rate": rate(counts["ungrounded"], counts["rag_judged"]),
        "error_rate": rate(errors, total_logged),
    }
    t = cfg.thresholds
    limits = {"toxic_response_rate": t.max_toxic_rate, "pii_leak_rate": t.max_pii_leak_rate,
              "guard_block_rate": t.max_guard_block_rate, "ungrounded_rate": t.max_ungrounded_rate,
              "error_rate": t.max_error_rate}
    alerts: list[Alert] = []
    for metric, limit in limits.items():
        value = rates[metric]
        if value is not None and value > limit:
            alerts.append({"metric": metric, "value": value, "threshold": limit,
                           "message": f"{metric} {value:.3f} > {limit:.3f} over {n} sampled requests"})
    report = {
        **base, "status": "ok", "alerted": bool(alerts), "reason": None, "sampled": n, "rates": rates,
        "counts": counts, "mean_groundedness": round(sum(scores) / len(scores), 4) if scores else None,
        "alerts": alerts, "examples": examples, "seconds": round(time.perf_counter() - started, 3)}
    write_json(cfg.metrics, report)
    return report
