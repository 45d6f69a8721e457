"""Calibration benchmark of the rollout decisions: thousands of simulated canary rollouts through the REAL verdict
and decision code of pipelines/rollout/analysis.py (`rate_verdicts`, `combine`, with the shipped `rollout:` settings
of params.yaml), looked at after every batch of traffic, as the `llmops_rollout` DAG looks every few minutes.

Each simulated rollout: batches of `--batch` user requests; each request goes to the challenger with the current
step's share; per arm it fails (5xx/timeout), is guard-blocked, is rated (a share of the successful ones) and rated
negative, is toxic / leaks PII, and (RAG traffic) is ungrounded, each with the row's rates. After each batch the
analysis looks: rollback / advance / complete / hold exactly as in production, with the step minima of params.yaml
(a look = `--look-s` seconds for min_duration_s). Rows (>= 500 rollouts each):
- A/A: identical arms; a rollback is a false rollback (target <= 0.05);
- challenger worse than the negative-feedback margin (0.10 -> 0.15, margin 0.05), and worse than the toxicity
  margin (0.01 -> 0.03, margin 0.02): a completed rollout is a false promotion (target <= 0.05);
- power: negative feedback 0.20 vs 0.10: rolled back before the challenger has 1,000 rated requests (target >=
  0.9), on the canary schedule and with a balanced 50/50 split (then both arms have < 1,000 rated);
- errors: the challenger fails 5% of requests (champion 0.1%): rolled back within its first 200 requests.
The median requests (both arms, and the challenger's) to a decision are reported per row.

Latency, TTFT and cost (quantile metrics, exact order-statistic CSs that need sorting per look) are left out of
the simulation; tests/test_rollout_sequential.py checks their coverage.

    .venv/bin/python bench/bench_rollout.py [--rollouts 1000]   # writes bench/results/rollout.{json,md}
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.config import load_params  # noqa: E402
from pipelines.rollout import analysis  # noqa: E402
from pipelines.rollout.config import RATE_METRICS, load_rollout_config  # noqa: E402

OUT = REPO / "bench" / "results" / "rollout"

BASE = {"error_rate": 0.001, "guard_block_rate": 0.05, "negative_feedback_rate": 0.10, "toxicity_rate": 0.01,
        "pii_leak_rate": 0.005, "ungrounded_rate": 0.20}
FIELDS = ("requests", "errors", "guarded", "blocked", "rated", "negative", "scored", "toxic", "pii_leak",
          "rag_scored", "ungrounded")


def rate_only(cfg):
    """The shipped analysis settings with the quantile metrics (latency, TTFT, cost) left out."""
    a = cfg.analysis
    return a.model_copy(update={"guardrails": {k: v for k, v in a.guardrails.items() if k in RATE_METRICS},
                                "success": {k: v for k, v in a.success.items() if k in RATE_METRICS}})


def simulate(cfg, a, champion: dict, challenger: dict, *, rollouts: int, batch: int, look_s: float,
             rated_share: float, rag_share: float, max_looks: int, seed: int, shares=None) -> dict:
    """Vectorised over rollouts. Returns per-rollout outcome (0 undecided, 1 promoted, 2 rolled back) and the
    challenger's requests / rated requests and all requests when it was decided."""
    rng = np.random.default_rng(seed)
    steps = cfg.steps_for("canary")
    if shares is not None:
        steps = [s.__class__(share=x, min_duration_s=s.min_duration_s, min_requests=s.min_requests,
                             min_rated=s.min_rated) for x, s in zip(shares, steps)]
    share = np.array([s.share for s in steps])
    min_dur = np.array([s.min_duration_s for s in steps])
    min_req = np.array([s.min_requests for s in steps])
    min_rated = np.array([s.min_rated for s in steps])
    R = rollouts
    cum = {arm: {f: np.zeros(R) for f in FIELDS} for arm in ("champion", "challenger")}
    for arm in cum:
        cum[arm]["errors_by_step"] = np.zeros((R, len(steps)))
    step_idx = np.zeros(R, dtype=int)
    step_age = np.zeros(R)
    step_req = np.zeros(R)
    step_rated = np.zeros(R)
    outcome = np.zeros(R, dtype=int)
    at_req = np.full(R, np.nan)
    at_ch_req = np.full(R, np.nan)
    at_ch_rated = np.full(R, np.nan)
    active = np.ones(R, dtype=bool)
    rates = {"champion": champion, "challenger": challenger}
    established = {m: np.zeros(R, dtype=bool) for m in a.success}
    for _ in range(max_looks):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        n_ch = rng.binomial(batch, share[step_idx[idx]])
        for arm, n in (("challenger", n_ch), ("champion", batch - n_ch)):
            r = rates[arm]
            err = rng.binomial(n, r["error_rate"])
            ok = n - err
            rated = rng.binomial(ok, rated_share)
            rag = rng.binomial(ok, rag_share)
            add = {"requests": n, "errors": err, "guarded": n, "blocked": rng.binomial(n, r["guard_block_rate"]),
                   "rated": rated, "negative": rng.binomial(rated, r["negative_feedback_rate"]), "scored": ok,
                   "toxic": rng.binomial(ok, r["toxicity_rate"]), "pii_leak": rng.binomial(ok, r["pii_leak_rate"]),
                   "rag_scored": rag, "ungrounded": rng.binomial(rag, r["ungrounded_rate"])}
            for f, v in add.items():
                cum[arm][f][idx] += v
            cum[arm]["errors_by_step"][idx, step_idx[idx]] += err
            if arm == "challenger":
                step_req[idx] += n
                step_rated[idx] += rated
        step_age[idx] += look_s
        ch = {f: v[idx] for f, v in cum["challenger"].items()}
        cb = {f: v[idx] for f, v in cum["champion"].items()}
        verdicts = analysis.rate_verdicts(ch, cb, a, shares=share)  # the production code path
        guard = [res["guardrail"][0] for res in verdicts.values() if "guardrail" in res]
        success = []
        for m, res in verdicts.items():
            if "success" in res:
                st, established[m][idx] = analysis.latch(res["success"][0], established[m][idx])
                success.append(st)
        s = step_idx[idx]
        step_ok = (step_age[idx] >= min_dur[s]) & (step_req[idx] >= min_req[s]) & (step_rated[idx] >= min_rated[s])
        code = analysis.combine(guard, success, step_ok)
        total = cum["challenger"]["requests"][idx] + cum["champion"]["requests"][idx]
        last = s == len(steps) - 1
        done_rb = code == analysis.ROLLBACK
        done_ok = (code == analysis.ADVANCE) & last
        for mask, val in ((done_rb, 2), (done_ok, 1)):
            sel = idx[mask]
            outcome[sel] = val
            at_req[sel] = total[mask]
            at_ch_req[sel] = ch["requests"][mask]
            at_ch_rated[sel] = ch["rated"][mask]
            active[sel] = False
        adv = idx[(code == analysis.ADVANCE) & ~last]
        step_idx[adv] += 1
        step_age[adv] = 0
        step_req[adv] = 0
        step_rated[adv] = 0
    return {"outcome": outcome, "requests": at_req, "challenger_requests": at_ch_req,
            "challenger_rated": at_ch_rated}


def summarize(res: dict) -> dict:
    o = res["outcome"]
    decided = o > 0

    def med(x, mask):
        return float(np.median(x[mask])) if mask.any() else None

    return {"rollouts": int(o.size), "rolled_back": float(np.mean(o == 2)), "promoted": float(np.mean(o == 1)),
            "undecided": float(np.mean(o == 0)),
            "median_requests_to_decision": med(res["requests"], decided),
            "median_challenger_requests_to_decision": med(res["challenger_requests"], decided),
            "median_challenger_rated_to_decision": med(res["challenger_rated"], decided)}


def rows(cfg, a, rollouts: int, batch: int, look_s: float, rated_share: float, rag_share: float,
         max_looks: int, seed: int) -> list[dict]:
    kw = dict(rollouts=rollouts, batch=batch, look_s=look_s, rated_share=rated_share, rag_share=rag_share,
              max_looks=max_looks)
    out = []

    def row(name, target, challenger, check, shares=None, seed_off=0, **extra):
        t = time.perf_counter()
        res = simulate(cfg, a, BASE, {**BASE, **challenger}, seed=seed + seed_off, shares=shares, **kw)
        s = summarize(res)
        value, passed = check(res, s)
        out.append({"row": name, "challenger": challenger, "shares": shares or [x.share for x in cfg.steps],
                    "target": target, "measured": value, "passed": bool(passed), **s, **extra,
                    "seconds": round(time.perf_counter() - t, 2)})

    row("A/A: false rollback", "<= 0.05", {}, lambda r, s: (s["rolled_back"], s["rolled_back"] <= 0.05), seed_off=1)
    row("negative feedback at the margin (0.10 -> 0.15): false promotion", "<= 0.05",
        {"negative_feedback_rate": 0.15}, lambda r, s: (s["promoted"], s["promoted"] <= 0.05), seed_off=2)
    row("toxicity at the margin (0.01 -> 0.03): false promotion", "<= 0.05", {"toxicity_rate": 0.03},
        lambda r, s: (s["promoted"], s["promoted"] <= 0.05), seed_off=3)

    def within(limit_rated):
        def check(r, s):
            p = float(np.mean((r["outcome"] == 2) & (r["challenger_rated"] < limit_rated)))
            return p, p >= 0.9
        return check

    row("power: negative feedback 0.20 vs 0.10, rolled back within 1,000 challenger rated (canary)", ">= 0.9",
        {"negative_feedback_rate": 0.20}, within(1000), seed_off=4)
    row("power: negative feedback 0.20 vs 0.10, rolled back within 1,000 rated per arm (50/50)", ">= 0.9",
        {"negative_feedback_rate": 0.20}, within(1000), shares=[0.5, 0.75, 0.9, 1.0], seed_off=5)

    def errors(r, s):
        p = float(np.mean((r["outcome"] == 2) & (r["challenger_requests"] <= 200)))
        return p, p >= 0.9

    row("challenger failing 5% of requests (champion 0.1%): rolled back within 200 challenger requests", ">= 0.9",
        {"error_rate": 0.05}, errors, seed_off=6)
    return out


def markdown(report: dict) -> str:
    lines = ["# Rollout decision calibration (bench/bench_rollout.py)", "",
             f"{report['rollouts']} simulated canary rollouts per row, looked at after every batch of "
             f"{report['batch']} requests ({report['look_s']:.0f} s of step time per look), "
             f"{report['rated_share']:.0%} of successful requests rated, steps {report['steps']}, shipped "
             f"`rollout.analysis` settings (alpha {report['alpha']}, non-inferiority alpha "
             f"{report['alpha_noninferiority']}; guardrails {report['guardrails']}; success margins "
             f"{report['success']}). The real `rate_verdicts` + `combine` of pipelines/rollout/analysis.py decide.",
             "", "| row | target | measured | pass | rolled back | promoted | undecided | median requests to decision "
             "(all / challenger / challenger rated) | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        m = [r["median_requests_to_decision"], r["median_challenger_requests_to_decision"],
             r["median_challenger_rated_to_decision"]]
        ms = " / ".join("-" if x is None else f"{x:,.0f}" for x in m)
        lines.append(f"| {r['row']} | {r['target']} | {r['measured']:.3f} | {'yes' if r['passed'] else 'NO'} | "
                     f"{r['rolled_back']:.3f} | {r['promoted']:.3f} | {r['undecided']:.3f} | {ms} | {r['seconds']} |")
    lines += ["", f"Total {report['seconds']} s on {report['machine']}. Baseline rates: {report['base_rates']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100, help="requests between two looks")
    ap.add_argument("--look-s", type=float, default=60.0, help="step time a look stands for (min_duration_s)")
    ap.add_argument("--rated-share", type=float, default=0.3)
    ap.add_argument("--rag-share", type=float, default=0.3)
    ap.add_argument("--max-looks", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    cfg = load_rollout_config(load_params(REPO / "params.yaml"))
    a = rate_only(cfg)
    started = time.perf_counter()
    result = rows(cfg, a, args.rollouts, args.batch, args.look_s, args.rated_share, args.rag_share, args.max_looks,
                  args.seed)
    report = {"rollouts": args.rollouts, "batch": args.batch, "look_s": args.look_s, "rated_share": args.rated_share,
              "rag_share": args.rag_share, "max_looks": args.max_looks, "seed": args.seed,
              "steps": [s.model_dump() for s in cfg.steps], "alpha": a.alpha,
              "alpha_noninferiority": a.alpha_noninferiority, "guardrails": a.guardrails, "success": a.success,
              "base_rates": BASE, "rows": result, "all_passed": all(r["passed"] for r in result),
              "seconds": round(time.perf_counter() - started, 1),
              "machine": f"{platform.machine()} {platform.python_version()}"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
