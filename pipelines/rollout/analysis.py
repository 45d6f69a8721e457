"""Online analysis of a running rollout: per-arm live metrics from the request and feedback logs of every replica,
and one decision (advance / hold / rollback / complete) from anytime-valid confidence sequences
(pipelines/rollout/sequential.py), recorded as JSON. No Airflow import: the `llmops_rollout` DAG, the
`llmops rollout` CLI and tests call `run`.

Data: every request line of the running rollout (`rollout_id`) since the rollout started (at most
`analysis.max_window_hours` back), split by `arm` (champion / challenger, or shadow in a shadow rollout); feedback
joined by request_id (a repeated feedback_id counts once; the latest rating of a request wins). Metrics per arm:
- error_rate: status >= 500 (5xx, 504 timeouts included) over requests;
- guard_block_rate: guard input or output "block" over requests with a guard verdict;
- negative_feedback_rate: negative ratings over rated requests (not in shadow: shadow answers are never shown);
- toxicity_rate, pii_leak_rate, ungrounded_rate: online evaluation (pipelines/monitoring/online_eval.py scorers)
  of successful answers, sampled by request_id hash at `eval_sample_rate` (the same requests at every look);
- latency_p95_ms, ttft_p95_ms: 95th percentile of successful requests; cost_per_1k_tokens: the median request's
  cost_usd per 1k tokens (the ratio of sums is reported beside it);
- shadow agreement: the share of shadow answers whose token F1 with the champion's answer to the same request
  (`shadow_of`) is at least `agreement_threshold`.

Decision, in order: a guardrail metric whose challenger - champion difference is surely above its margin rolls back
at once (family-wise alpha split over the guardrails); otherwise the step holds until its minima (duration,
challenger requests, rated requests) are met, every metric has enough data ("insufficient_data"), and every success
metric is surely within its non-inferiority margin; then it advances (or completes on the last step).
"""
from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from pipelines.rollout import sequential as sq
from pipelines.rollout.config import QUANTILE_METRICS, RATE_METRICS, AnalysisConfig, RolloutConfig
from pipelines.rollout.logs import read_records
from pipelines.rollout.state import RolloutState, iso, parse_iso, store_for, utc_now

NOT_APPLICABLE = 4
STATUS_NAMES = {**sq.STATUS_NAMES, NOT_APPLICABLE: "not_applicable"}
HOLD, ADVANCE, ROLLBACK = 0, 1, 2

# metric -> (events field, denominator field, the analysis floor that applies)
RATE_SPECS: dict[str, tuple[str, str, str]] = {
    "error_rate": ("errors", "requests", "min_requests"),
    "guard_block_rate": ("blocked", "guarded", "min_requests"),
    "negative_feedback_rate": ("negative", "rated", "min_rated"),
    "toxicity_rate": ("toxic", "scored", "min_scored"),
    "pii_leak_rate": ("pii_leak", "scored", "min_scored"),
    "ungrounded_rate": ("ungrounded", "rag_scored", "min_scored"),
}
# metric -> (per-request values field, quantile)
QUANTILE_SPECS: dict[str, tuple[str, float]] = {
    "latency_p95_ms": ("latency_ms", 0.95), "ttft_p95_ms": ("ttft_ms", 0.95), "cost_per_1k_tokens": ("cost_per_1k", 0.5),
}
FEEDBACK_METRICS = frozenset({"negative_feedback_rate"})
# per-request guardrails whose exact test in a canary is the design-based conditional one (events per step)
CONDITIONAL_METRICS = frozenset({"error_rate"})
assert set(RATE_SPECS) == set(RATE_METRICS) and set(QUANTILE_SPECS) == set(QUANTILE_METRICS)


def metric_alphas(a: AnalysisConfig, skip: frozenset[str] = frozenset()) -> tuple[float, float]:
    """(alpha per guardrail metric, alpha per success metric): the guardrails share `alpha` (Bonferroni: a false
    rollback needs one of them to err); each success metric gets the whole `alpha_noninferiority` (advancing
    needs all of them, an intersection-union test)."""
    guards = [m for m in a.guardrails if m not in skip]
    return a.alpha / max(len(guards), 1), a.alpha_noninferiority


# --- vectorised verdicts: the analysis and bench/bench_rollout.py run exactly these ----------------------------
def rate_verdicts(ch: dict[str, Any], cb: dict[str, Any], a: AnalysisConfig,
                  skip: frozenset[str] = frozenset(), shares=None) -> dict[str, dict[str, Any]]:
    """Per rate metric and role ("guardrail", "success"): (status, lo, hi, log_e): the verdict, the normal-mixture
    CS of challenger - champion and the exact test's log e-value (pipelines/rollout/sequential.py). `shares`
    (a canary's step shares) with `<events>_by_step` counts in ch/cb switch the CONDITIONAL_METRICS guardrails to
    the design-based conditional test. `ch` / `cb`
    map count fields to scalars or arrays (one entry per simulated rollout in the benchmark)."""
    a_guard, a_success = metric_alphas(a, skip)
    out: dict[str, dict[str, Any]] = {}
    for metric, (num, den, floor_key) in RATE_SPECS.items():
        if metric in skip or (metric not in a.guardrails and metric not in a.success):
            continue
        floor = getattr(a, floor_key)
        s1, n1, s0, n0 = (np.asarray(x, dtype=float) for x in (ch[num], ch[den], cb[num], cb[den]))
        # nothing to measure on either arm although both served enough requests: the metric does not apply
        # (no RAG traffic, guard off, nobody rates); reported as such, never silently passed
        na = (n1 == 0) & (n0 == 0) & (np.asarray(ch["requests"]) >= a.min_requests) & \
             (np.asarray(cb["requests"]) >= a.min_requests)
        res: dict[str, Any] = {}
        if metric in a.guardrails:
            by_step = (ch[f"{num}_by_step"], cb[f"{num}_by_step"], shares) \
                if shares is not None and metric in CONDITIONAL_METRICS else None
            st, lo, hi, log_e = sq.rate_guardrail(s1, n1, s0, n0, margin=a.guardrails[metric], alpha=a_guard,
                                                  tuned_n=a.tuned_n, floor=floor, by_step=by_step)
            res["guardrail"] = (np.where(na, NOT_APPLICABLE, st), lo, hi, log_e)
        if metric in a.success:
            st, lo, hi, log_e = sq.rate_noninferior(s1, n1, s0, n0, margin=a.success[metric], alpha=a_success,
                                                    tuned_n=a.tuned_n, floor=floor)
            res["success"] = (np.where(na, NOT_APPLICABLE, st), lo, hi, log_e)
        out[metric] = res
    return out


def quantile_verdict(v1, v0, q: float, margin: float, alpha: float, floor: int, role: str):
    """(status, lo, hi) of quantile1 / quantile0 - 1 for one role; scalar (values are sorted per look)."""
    lo, hi = sq.quantile_ratio_cs(v1, v0, q, alpha)
    if len(v1) < floor or len(v0) < floor:
        return sq.INSUFFICIENT, lo, hi
    if role == "guardrail":
        return (sq.WORSE if lo > margin else sq.UNDECIDED), lo, hi
    return (sq.NON_INFERIOR if hi < margin else sq.UNDECIDED), lo, hi


def latch(status, established):
    """A success metric shown non-inferior once in this rollout stays so: the confidence sequences hold at every
    look at once, so stopping a test at its first rejection keeps its error bound (this is what lets the 100%
    step, where the champion gets no more traffic, complete). Returns (status, established) updated."""
    status = np.asarray(status)
    established = np.asarray(established, dtype=bool)
    status = np.where(established, sq.NON_INFERIOR, status)
    return status, established | (status == sq.NON_INFERIOR)


def established_metrics(state: RolloutState) -> set[str]:
    """The success metrics a previous look of this rollout showed non-inferior (recorded in its history)."""
    return {m for h in state.history for m in (h.get("established") or [])}


def combine(guard_statuses: list, success_statuses: list, step_ok) -> np.ndarray:
    """ROLLBACK where any guardrail is WORSE; else ADVANCE where the step's minima are met, no metric lacks data
    and every success metric is NON_INFERIOR (or does not apply); else HOLD."""
    step_ok = np.asarray(step_ok, dtype=bool)
    shape = step_ok.shape
    worse = np.zeros(shape, dtype=bool)
    lacking = np.zeros(shape, dtype=bool)
    for st in guard_statuses:
        st = np.broadcast_to(np.asarray(st), shape)
        worse |= st == sq.WORSE
        lacking |= st == sq.INSUFFICIENT
    all_ok = np.ones(shape, dtype=bool)
    for st in success_statuses:
        st = np.broadcast_to(np.asarray(st), shape)
        lacking |= st == sq.INSUFFICIENT
        all_ok &= (st == sq.NON_INFERIOR) | (st == NOT_APPLICABLE)
    return np.where(worse, ROLLBACK, np.where(step_ok & ~lacking & all_ok, ADVANCE, HOLD))


# --- per-arm statistics from the logs ---------------------------------------------------------------------------
def _tokens_f1(a: str | None, b: str | None) -> float:
    from pipelines.monitoring.descriptors import words

    ta, tb = words(a or ""), words(b or "")
    if not ta and not tb:
        return 1.0
    if not ta or not tb:
        return 0.0
    common: dict[str, int] = {}
    cb: dict[str, int] = {}
    for w in tb:
        cb[w] = cb.get(w, 0) + 1
    overlap = 0
    for w in ta:
        if cb.get(w, 0) > common.get(w, 0):
            common[w] = common.get(w, 0) + 1
            overlap += 1
    if overlap == 0:
        return 0.0
    p, r = overlap / len(ta), overlap / len(tb)
    return 2 * p * r / (p + r)


def _sampled(request_id: str, rate: float) -> bool:
    if rate >= 1.0:
        return True
    return int.from_bytes(hashlib.sha256(str(request_id).encode()).digest()[:8], "big") / 2.0 ** 64 < rate


def _empty_arm(steps: int) -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "errors_by_step": np.zeros(steps), "guarded": 0, "blocked": 0, "rated": 0,
            "negative": 0, "scored": 0,
            "toxic": 0, "pii_leak": 0, "rag_scored": 0, "ungrounded": 0, "latency_ms": [], "ttft_ms": [],
            "cost_per_1k": [], "cost_usd": 0.0, "tokens": 0, "step_requests": 0, "step_rated": 0,
            "versions": set()}


class _Scorer:
    """The online-eval scorers (pipelines/monitoring/online_eval.py), with its settings (params `online_eval`)."""

    def __init__(self, online_eval):
        from pipelines.monitoring.descriptors import ToxicityScorer

        self.cfg = online_eval
        self.tox = ToxicityScorer(online_eval.toxicity_lexicon)

    def score(self, rec: dict[str, Any]) -> dict[str, Any]:
        from pipelines.monitoring.descriptors import pii_counts
        from pipelines.monitoring.online_eval import _server_pii, groundedness

        toxic = self.tox.score_one(rec.get("response")) >= self.cfg.toxicity_threshold
        # the server's own count of PII in the answer (taken before it redacted the logged copy); the redactor on
        # the logged text only for lines that carry no count (older writers)
        server = _server_pii(rec)
        leaked = server if server is not None else sum(pii_counts(rec.get("response"), self.cfg.pii_entities).values())
        g = groundedness(rec.get("response"), rec.get("contexts")) if rec.get("mode") == "rag" else None
        return {"toxic": toxic, "pii_leak": bool(leaked), "groundedness": g}


def _step_index_at(state: RolloutState):
    """ts -> the index of the step the rollout was on at that time (from its start/advance history)."""
    import bisect

    marks = sorted((parse_iso(h["ts"]), int(h["to_step"])) for h in state.history
                   if h.get("event") in ("start", "advance") and h.get("to_step") is not None)
    times = [t for t, _ in marks]

    def at(ts: datetime) -> int:
        i = bisect.bisect_right(times, ts) - 1
        return marks[i][1] if i >= 0 else 0

    return at


def arm_stats(requests: list[dict[str, Any]], feedback: list[dict[str, Any]], state: RolloutState,
              a: AnalysisConfig, online_eval) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """({"champion": stats, "challenger": stats}, extra) for the rollout's lines; in a shadow rollout the
    challenger is the "shadow" arm. extra: agreement counts, lines of other rollouts, unknown arms."""
    from pipelines.monitoring.online_eval import _blocked

    shadow = state.strategy == "shadow"
    other = "shadow" if shadow else "challenger"
    step_start = parse_iso(state.step_started_at)
    arms = {"champion": _empty_arm(len(state.steps)), "challenger": _empty_arm(len(state.steps))}
    step_of = _step_index_at(state)
    extra = {"other_rollout_lines": 0, "unknown_arm_lines": 0, "agreement_pairs": 0, "agreements": 0,
             "feedback_lines": len(feedback), "feedback_unmatched": 0, "feedback_duplicates": 0}
    by_id: dict[str, tuple[str, dict[str, Any]]] = {}
    shadows: list[dict[str, Any]] = []
    answers: dict[str, dict[str, Any]] = {}  # champion answers by request_id (shadow agreement)
    scorer = _Scorer(online_eval)
    for rec in requests:
        if rec.get("rollout_id") != state.rollout_id:
            extra["other_rollout_lines"] += 1
            continue
        arm = rec.get("arm")
        key = "champion" if arm == "champion" else "challenger" if arm == other else None
        if key is None:
            extra["unknown_arm_lines"] += 1
            continue
        st = arms[key]
        st["requests"] += 1
        if rec.get("model_version") is not None:
            st["versions"].add(str(rec["model_version"]))
        status = rec.get("status") if isinstance(rec.get("status"), int) else 500
        in_step = (ts := parse_iso(rec["ts"])) >= step_start
        st["step_requests"] += in_step
        if status >= 500:
            st["errors"] += 1
            st["errors_by_step"][step_of(ts)] += 1
        blocked = _blocked(rec.get("guard"))
        if blocked is not None:
            st["guarded"] += 1
            st["blocked"] += bool(blocked)
        if status < 400:
            if isinstance(rec.get("latency_ms"), (int, float)):
                st["latency_ms"].append(float(rec["latency_ms"]))
            if isinstance(rec.get("ttft_ms"), (int, float)):
                st["ttft_ms"].append(float(rec["ttft_ms"]))
            tokens = (rec.get("prompt_tokens") or 0) + (rec.get("completion_tokens") or 0)
            if isinstance(rec.get("cost_usd"), (int, float)) and tokens > 0:
                st["cost_per_1k"].append(float(rec["cost_usd"]) / tokens * 1000)
                st["cost_usd"] += float(rec["cost_usd"])
                st["tokens"] += tokens
            if isinstance(rec.get("response"), str) and _sampled(rec.get("request_id", ""), a.eval_sample_rate):
                sc = scorer.score(rec)
                st["scored"] += 1
                st["toxic"] += sc["toxic"]
                st["pii_leak"] += sc["pii_leak"]
                if sc["groundedness"] is not None:
                    st["rag_scored"] += 1
                    st["ungrounded"] += sc["groundedness"] < online_eval.min_groundedness
        if rec.get("request_id"):
            by_id[str(rec["request_id"])] = (key, {"ts": ts, "in_step": in_step})
        if key == "champion":
            answers[str(rec.get("request_id"))] = {"response": rec.get("response"), "status": status}
        elif shadow:
            shadows.append({"shadow_of": rec.get("shadow_of"), "response": rec.get("response"), "status": status})
    # feedback: one rating per request (the latest), a repeated feedback_id once
    seen_ids: set[str] = set()
    latest: dict[str, dict[str, Any]] = {}
    for fb in sorted(feedback, key=lambda f: str(f.get("ts"))):
        fid = str(fb.get("feedback_id") or "")
        if fid and fid in seen_ids:
            extra["feedback_duplicates"] += 1
            continue
        seen_ids.add(fid)
        latest[str(fb.get("request_id"))] = fb
    for rid, fb in latest.items():
        hit = by_id.get(rid)
        if hit is None:
            extra["feedback_unmatched"] += 1
            continue
        key, info = hit
        arms[key]["rated"] += 1
        arms[key]["negative"] += bool(fb.get("negative"))
        arms[key]["step_rated"] += bool(info["in_step"])
    for sh in shadows:
        champ = answers.get(str(sh["shadow_of"]))
        if champ is None or sh["status"] >= 400 or champ["status"] >= 400:
            continue
        extra["agreement_pairs"] += 1
        extra["agreements"] += _tokens_f1(sh["response"], champ["response"]) >= a.agreement_threshold
    return arms, extra


# --- the decision -----------------------------------------------------------------------------------------------
def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isinf(x) or math.isnan(x) else round(x, 6)


def _point(metric: str, st: dict[str, Any]) -> float | None:
    if metric in RATE_SPECS:
        num, den, _ = RATE_SPECS[metric]
        return round(st[num] / st[den], 6) if st[den] else None
    field, q = QUANTILE_SPECS[metric]
    vals = st[field]
    return round(float(np.quantile(vals, q)), 6) if vals else None


def _arm_interval(metric: str, st: dict[str, Any], alpha: float) -> tuple[float | None, float | None]:
    if metric in RATE_SPECS:
        num, den, _ = RATE_SPECS[metric]
        lo, hi = sq.bernoulli_cs(st[num], st[den], alpha)
        return _f(lo), _f(hi)
    field, q = QUANTILE_SPECS[metric]
    lo, hi = sq.quantile_cs(st[field], q, alpha)
    return _f(lo), _f(hi)


def _worse_reason(metric: str, r: dict[str, Any]) -> str:
    """Which of the two tests found the guardrail worse: the confidence sequence lying above the margin, or (rates)
    the exact test's e-value crossing its threshold while the normal-mixture sequence is still wide (few events)."""
    where = f"{metric}: challenger - champion in [{r['diff_lo']}, {r['diff_hi']}]"
    if r["diff_lo"] is not None and r["diff_lo"] > r["margin"]:
        return f"{where}, surely above the guardrail margin {r['margin']}"
    return (f"{where}; the exact test rejects 'difference <= {r['margin']}' (log e {r.get('log_e')} >= "
            f"{r.get('e_threshold')})")


def step_check(state: RolloutState, ch: dict[str, Any], now: datetime) -> dict[str, Any]:
    step = state.step
    age = state.step_age_s(now)
    checks = {"duration_s": {"observed": round(age, 1), "min": step.min_duration_s},
              "requests": {"observed": ch["step_requests"], "min": step.min_requests},
              "rated": {"observed": ch["step_rated"], "min": step.min_rated}}
    for c in checks.values():
        c["met"] = c["observed"] >= c["min"]
    return {"index": state.step_index, "share": state.step.share, "of": len(state.steps),
            "met": all(c["met"] for c in checks.values()), "checks": checks}


def decide(state: RolloutState, arms: dict[str, dict[str, Any]], extra: dict[str, Any], cfg: RolloutConfig,
           now: datetime) -> dict[str, Any]:
    a = cfg.analysis
    ch, cb = arms["challenger"], arms["champion"]
    shadow = state.strategy == "shadow"
    skip = FEEDBACK_METRICS if shadow else frozenset()
    a_guard, a_success = metric_alphas(a, skip)
    metrics: dict[str, Any] = {}
    guard_st: list = []
    success_st: list = []
    shares = [s.share for s in state.steps] if state.strategy == "canary" else None
    before = established_metrics(state)
    for metric, roles in rate_verdicts(ch, cb, a, skip, shares).items():
        metrics[metric] = {"kind": "rate", "roles": {}}
        for role, (st, lo, hi, log_e) in roles.items():
            if role == "success":
                st = latch(st, metric in before)[0]
            st = int(np.asarray(st))
            (guard_st if role == "guardrail" else success_st).append(st)
            margin = (a.guardrails if role == "guardrail" else a.success)[metric]
            metrics[metric]["roles"][role] = {"status": STATUS_NAMES[st], "margin": margin,
                                              "alpha": a_guard if role == "guardrail" else a_success,
                                              "diff_lo": _f(np.asarray(lo)), "diff_hi": _f(np.asarray(hi)),
                                              "log_e": _f(np.asarray(log_e)),
                                              "e_threshold": round(math.log(2 / (a_guard if role == "guardrail"
                                                                                 else a_success)), 4)}
    for metric, (field, q) in QUANTILE_SPECS.items():
        roles = [r for r, table in (("guardrail", a.guardrails), ("success", a.success)) if metric in table]
        if not roles or metric in skip:
            continue
        metrics[metric] = {"kind": "quantile", "q": q, "relative": True, "roles": {}}
        for role in roles:
            margin = (a.guardrails if role == "guardrail" else a.success)[metric]
            alpha = a_guard if role == "guardrail" else a_success
            st, lo, hi = quantile_verdict(ch[field], cb[field], q, margin, alpha, a.min_requests, role)
            if not ch[field] and not cb[field] and ch["requests"] >= a.min_requests and \
                    cb["requests"] >= a.min_requests:
                st = NOT_APPLICABLE
            if role == "success":
                st = int(latch(st, metric in before)[0])
            (guard_st if role == "guardrail" else success_st).append(st)
            metrics[metric]["roles"][role] = {"status": STATUS_NAMES[st], "margin": margin, "alpha": alpha,
                                              "diff_lo": _f(lo), "diff_hi": _f(hi)}
    display_alpha = a.alpha_noninferiority / 2
    for metric, m in metrics.items():
        for arm_name, st in (("champion", cb), ("challenger", ch)):
            lo, hi = _arm_interval(metric, st, display_alpha)
            n = st[RATE_SPECS[metric][1]] if metric in RATE_SPECS else len(st[QUANTILE_SPECS[metric][0]])
            m[arm_name] = {"value": _point(metric, st), "n": int(n), "lo": lo, "hi": hi}
    agreement = None
    if shadow:
        pairs, agree = extra["agreement_pairs"], extra["agreements"]
        lo, hi = sq.bernoulli_cs(agree, pairs, a.alpha_noninferiority)
        agreement = {"pairs": pairs, "agreements": agree, "value": round(agree / pairs, 6) if pairs else None,
                     "lo": _f(lo), "hi": _f(hi), "min": a.min_shadow_agreement, "threshold": a.agreement_threshold}
        if a.min_shadow_agreement is not None:
            st = sq.INSUFFICIENT if pairs < a.min_requests else (
                sq.NON_INFERIOR if float(lo) >= a.min_shadow_agreement else sq.UNDECIDED)
            st = int(latch(st, "shadow_agreement" in before)[0])
            agreement["status"] = STATUS_NAMES[st]
            success_st.append(st)
    step = step_check(state, ch, now)
    code = int(combine(guard_st, success_st, step["met"]))
    reasons: list[str] = []
    for metric, m in metrics.items():
        for role, r in m["roles"].items():
            if role == "guardrail" and r["status"] == "worse":
                reasons.append(_worse_reason(metric, r))
    if code == ROLLBACK:
        decision = "rollback"
    else:
        reasons = [f"step {step['index'] + 1}/{step['of']}: {k} {c['observed']} < {c['min']}"
                   for k, c in step["checks"].items() if not c["met"]]
        lacking = sorted({mn for mn, m in metrics.items() for r in m["roles"].values()
                          if r["status"] == "insufficient_data"}
                         | ({"shadow_agreement"} if agreement and agreement.get("status") == "insufficient_data"
                            else set()))
        if lacking:
            reasons.insert(0, "insufficient_data: " + ", ".join(lacking))
        pending = sorted({mn for mn, m in metrics.items() for role, r in m["roles"].items()
                          if role == "success" and r["status"] == "undecided"}
                         | ({"shadow_agreement"} if agreement and agreement.get("status") == "undecided" else set()))
        if pending:
            reasons.append("not yet non-inferior within margin: " + ", ".join(pending))
        n_a = sorted(mn for mn, m in metrics.items() for r in m["roles"].values() if r["status"] == "not_applicable")
        if code == ADVANCE:
            decision = "complete" if state.last_step else "advance"
            reasons = ["every success metric non-inferior, no guardrail worse, step minima met"] + (
                [f"not applicable (no data on either arm): {', '.join(n_a)}"] if n_a else [])
        else:
            decision = "hold"
    approval = False
    if cfg.final_approval and decision in ("advance", "complete"):
        nxt = state.steps[state.step_index + 1].share if decision == "advance" else None
        approval = (nxt is not None and nxt >= 1.0) or (decision == "complete" and state.step.share < 1.0)
    established = sorted({mn for mn, m in metrics.items() if (m["roles"].get("success") or {}).get("status")
                          == "non_inferior"} | ({"shadow_agreement"} if agreement and agreement.get("status")
                                                == "non_inferior" else set()))
    return {"decision": decision, "reasons": reasons, "approval_required": approval, "step": step,
            "metrics": metrics, "agreement": agreement, "established": established,
            "established_before": sorted(before)}


def _arm_summary(st: dict[str, Any]) -> dict[str, Any]:
    return {"requests": st["requests"], "rated": st["rated"], "scored": st["scored"], "errors": st["errors"],
            "step_requests": st["step_requests"], "step_rated": st["step_rated"], "versions": sorted(st["versions"]),
            "cost_per_1k_tokens_ratio": round(st["cost_usd"] / st["tokens"] * 1000, 8) if st["tokens"] else None}


def window(state: RolloutState, cfg: RolloutConfig, now: datetime) -> tuple[datetime, datetime]:
    since = max(parse_iso(state.created_at), now - timedelta(hours=cfg.analysis.max_window_hours))
    return since, now + timedelta(milliseconds=1)


def record_path(cfg: RolloutConfig, state: RolloutState, now: datetime):
    from pipelines.config import project_root
    from pathlib import Path

    root = Path(cfg.decisions_dir)
    root = root if root.is_absolute() else project_root() / root
    return root / state.rollout_id / f"{now:%Y%m%dT%H%M%S%f}.json", root / "latest.json"


def run(cfg: RolloutConfig, *, state: RolloutState | None = None, now: datetime | None = None,
        online_eval=None, write: bool = True) -> dict[str, Any]:
    """One look at the running rollout: per-arm metrics and the decision, written atomically to
    `<decisions_dir>/<rollout_id>/<ts>.json` and `<decisions_dir>/latest.json` (with `write`). The state is not
    changed here (pipelines/rollout/lifecycle.py applies the decision). No rollout running: decision "noop"."""
    from pipelines.io import write_json

    now = now or utc_now()
    if state is None:
        state = store_for(cfg.state_path, cfg.state_poll_s).load()
    if state is None or not state.running:
        return {"decision": "noop", "reasons": ["no rollout running" if state is None else
                                                f"rollout {state.rollout_id} is {state.status}"],
                "approval_required": False, "rollout": state.to_dict() if state else None, "at": iso(now)}
    if online_eval is None:
        from pipelines.config import load_section
        from pipelines.monitoring.online_eval import OnlineEvalConfig

        online_eval = load_section("online_eval", OnlineEvalConfig)
    since, until = window(state, cfg, now)
    requests, req_acc = read_records(cfg.analysis.request_log, since, until)
    feedback, fb_acc = read_records(cfg.analysis.feedback_log, since, until)
    arms, extra = arm_stats(requests, feedback, state, cfg.analysis, online_eval)
    result = decide(state, arms, extra, cfg, now)
    report = {
        **result, "at": iso(now), "rollout": state.to_dict(),
        "arms": {"champion": _arm_summary(arms["champion"]), "challenger": _arm_summary(arms["challenger"])},
        "inputs": {"since": iso(since), "until": iso(until), "request_log": req_acc, "feedback_log": fb_acc,
                   **extra, "analysis": json.loads(cfg.analysis.model_dump_json()),
                   "method": "anytime-valid confidence sequences (pipelines/rollout/sequential.py)"},
    }
    if write:
        path, latest = record_path(cfg, state, now)
        report["record"] = str(path)
        write_json(path, report)
        write_json(latest, report)
    return report
