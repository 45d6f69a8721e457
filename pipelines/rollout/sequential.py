"""Anytime-valid confidence sequences (CS) for the rollout analysis: intervals that hold at every look at once, so
the analysis may look every few minutes and stop whenever it likes without inflating its error rates.

Why no library: the lock has none that fits. `confseq` (Howard & Waudby-Smith) ships on PyPI as an sdist that needs
a C++ (Boost) build, and `spotify-confidence` pulls a whole Jupyter/bokeh stack into the serving image for one
formula; both were checked. What follows is small, numpy/scipy only, and each piece names its source.

1. `bernoulli_cs` -- exact, non-asymptotic CS for a Bernoulli rate: the conjugate (beta-binomial) mixture
   martingale M_n(p) = B(a+S, b+n-S) / B(a, b) / (p^S (1-p)^(n-S)) is a non-negative martingale with M_0 = 1 under
   rate p, so by Ville's inequality P(exists n: M_n(p) >= 1/alpha) <= alpha and {p : M_n(p) < 1/alpha} is a
   (1-alpha) CS (Robbins 1970, "Statistical methods related to the law of the iterated logarithm", Ann. Math.
   Statist.; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
   sequences", Ann. Statist., section on conjugate mixtures). Exact for rare events (an error rate near 0),
   where normal approximations fail.
2. `normal_mixture_diff_cs` -- CS for a difference of two means with any (changing) allocation between the arms:
   S = I (diff_hat - diff), I = 1 / Var(diff_hat), is asymptotically a Brownian motion in information time I
   (the "canonical joint distribution" of group-sequential designs, Jennison & Turnbull 2000, ch. 3, holds for
   the two-sample difference with any group sizes), and the two-sided normal-mixture boundary
   |S| < sqrt((I + rho) log((I + rho) / (rho alpha^2))) holds for all I with probability >= 1 - alpha (Robbins'
   normal mixture; Howard et al. 2021 eq. (14); the "asymptotic confidence sequences" of Waudby-Smith, Arbour,
   Sinha, Kennedy & Ramdas 2024, "Time-uniform central limit theory and asymptotic confidence sequences", Ann.
   Statist.; the mSPRT of Johari, Koomen, Pekelis & Walsh 2022, "Always valid inference: continuous monitoring
   of A/B tests", Oper. Res.). The variance is plugged in with Agresti-Caffo's +1/+1 adjustment so a zero count
   does not give a zero variance. rho is chosen so the boundary is tightest near `tuned_n` observations per arm
   (Howard et al. 2021, eq. (15)).
3. `ui_log_e` and `conditional_log_e` -- an exact two-sample test for the same difference: sequential universal inference (Wasserman,
   Ramdas & Balakrishnan 2020, "Universal inference", PNAS): the product of the arms' Beta mixtures of (1) over the
   binomial likelihood maximised under the null is an e-process for any interleaving of the arms. A rate metric's
   verdict uses (2) and (3) each at alpha/2 and is sure when either is: (3) decides rare-event guardrails (5%
   errors against ~0.1%) within a few events, where (2)'s plug-in variance is poor; (2) is a little tighter for
   balanced arms at moderate rates (negative feedback 0.1 vs 0.2). For a canary's per-request guardrail (error
   rate, margin 0) the exact test is the design-based `conditional_log_e` instead: given each request's assignment
   probability (the step's share), the arms of the error events alone test "the challenger raises the rate",
   without estimating the champion's rate (its regret was what made (3) need ~7 errors in 200 requests).
4. `quantile_cs` -- CS for a quantile (p95 latency): the count of observations at or below the true q-quantile is
   Binomial(n, q), so the exact CS of (1) for that count brackets the quantile between two order statistics at
   every n at once (Howard & Ramdas 2022, "Sequential estimation of quantiles with applications to A/B-testing
   and best-arm identification", Bernoulli).

Everything is vectorised over leading array dimensions: the calibration benchmark (bench/bench_rollout.py) runs
thousands of simulated rollouts through these same functions.

Assumptions: the unit is the request (or rated request). Sticky assignment groups a key's requests in one arm, so
the intervals assume many keys, each a small part of the traffic. Under slowly changing traffic the mixtures cover
the running average of the per-request rates (Howard et al. 2021 allow a changing conditional mean), which both
arms share only when both are served over the same period: a rollout compares arms over the same window.
"""
from __future__ import annotations

import numpy as np
from scipy.special import betaln

PRIOR_A = 0.5  # Beta(1/2, 1/2) mixing distribution (Jeffreys): symmetric, gives mass to rates near 0 and 1
PRIOR_B = 0.5
_BISECT = 50  # halvings of [0, 1]: below 1e-15


def _log_mixture(s, n, p, a: float = PRIOR_A, b: float = PRIOR_B):
    """log M_n(p) of the beta-binomial mixture martingale (vectorised)."""
    p = np.clip(p, 1e-300, 1 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (betaln(a + s, b + n - s) - betaln(a, b)
                - np.where(s > 0, s * np.log(p), 0.0) - np.where(n - s > 0, (n - s) * np.log1p(-p), 0.0))


def bernoulli_cs(s, n, alpha: float):
    """(lo, hi): a (1 - alpha) confidence sequence for a Bernoulli rate after `s` successes in `n` trials.
    n = 0 gives (0, 1). Vectorised over s and n (same shapes)."""
    s = np.asarray(s, dtype=float)
    n = np.asarray(n, dtype=float)
    s, n = np.broadcast_arrays(s, n)
    phat = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    thr = np.log(1.0 / alpha)
    # lower: log M decreases on (0, phat]; find the largest p with log M >= thr (0 when s == 0)
    lo_a, lo_b = np.zeros_like(phat), phat.copy()
    hi_a, hi_b = phat.copy(), np.ones_like(phat)
    for _ in range(_BISECT):
        mid = (lo_a + lo_b) / 2
        out = _log_mixture(s, n, mid) >= thr
        lo_a = np.where(out, mid, lo_a)
        lo_b = np.where(out, lo_b, mid)
        mid = (hi_a + hi_b) / 2
        out = _log_mixture(s, n, mid) >= thr
        hi_b = np.where(out, mid, hi_b)
        hi_a = np.where(out, hi_a, mid)
    lo = np.where((s > 0) & (n > 0), lo_a, 0.0)
    hi = np.where((s < n) & (n > 0), hi_b, 1.0)
    return lo, hi


def _rho(tuned_n: float, alpha: float) -> float:
    """Mixture variance rho making the normal-mixture boundary tightest at intrinsic time m (Howard et al. 2021,
    eq. (15): rho = m / (2 log(1/alpha) + log(1 + 2 log(1/alpha)))), with m the information of a difference of two
    rates at their largest variance (p = 1/2) after tuned_n observations per arm: m = tuned_n / (2 * 0.25)."""
    m = tuned_n / 0.5
    la = np.log(1.0 / alpha)
    return m / (2 * la + np.log(1 + 2 * la))


def normal_mixture_diff_cs(s1, n1, s0, n0, alpha: float, tuned_n: float):
    """(lo, hi) for rate1 - rate0 (arm 1: challenger, arm 0: champion), asymptotic normal-mixture CS."""
    s1, n1, s0, n0 = (np.asarray(x, dtype=float) for x in (s1, n1, s0, n0))
    p1 = (s1 + 1) / (n1 + 2)
    p0 = (s0 + 1) / (n0 + 2)
    var = p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2)
    info = 1.0 / var
    rho = _rho(tuned_n, alpha)
    half = np.sqrt((info + rho) * np.log((info + rho) / (rho * alpha ** 2))) / info
    d = p1 - p0
    return np.maximum(d - half, -1.0), np.minimum(d + half, 1.0)


def _profile_loglik(s1, n1, s0, n0, d):
    """max over p0 of the log-likelihood of (rate1, rate0) = (p0 + d, p0): the binomial likelihood's profile on
    the line rate1 - rate0 = d (concave in p0: bisection on the derivative's sign, vectorised)."""
    s1, n1, s0, n0, d = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (s1, n1, s0, n0, d)))
    eps = 1e-12
    lo = np.maximum(0.0, -d) + eps
    hi = np.minimum(1.0, 1.0 - d) - eps
    f1, f0 = n1 - s1, n0 - s0

    def grad(p):
        with np.errstate(divide="ignore", invalid="ignore"):
            g = (np.where(s1 > 0, s1 / (p + d), 0.0) - np.where(f1 > 0, f1 / (1 - p - d), 0.0)
                 + np.where(s0 > 0, s0 / p, 0.0) - np.where(f0 > 0, f0 / (1 - p), 0.0))
        return g

    a, b = lo.copy(), hi.copy()
    for _ in range(_BISECT):
        mid = (a + b) / 2
        up = grad(mid) > 0
        a = np.where(up, mid, a)
        b = np.where(up, b, mid)
    p = np.clip((a + b) / 2, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(s1 > 0, s1 * np.log(p + d), 0.0) + np.where(f1 > 0, f1 * np.log1p(-(p + d)), 0.0)
                + np.where(s0 > 0, s0 * np.log(p), 0.0) + np.where(f0 > 0, f0 * np.log1p(-p), 0.0))


def log_mixture_evidence(s, n, a: float = PRIOR_A, b: float = PRIOR_B):
    """log of the beta-binomial mixture likelihood: log of the integral of q^s (1-q)^(n-s) dBeta(a, b)(q)."""
    s = np.asarray(s, dtype=float)
    n = np.asarray(n, dtype=float)
    return betaln(a + s, b + n - s) - betaln(a, b)


def ui_log_e(s1, n1, s0, n0, margin: float, side: str):
    """log e-value of the sequential universal-inference test (Wasserman, Ramdas & Balakrishnan 2020, "Universal
    inference", PNAS, section 7: the running mixture likelihood over the maximised null likelihood is an
    e-process, so rejecting when it reaches 1/alpha is valid at every look) for two independent binomial arms:
      side "above": H0: rate1 - rate0 <= margin   (a guardrail: reject = the challenger is surely worse),
      side "below": H0: rate1 - rate0 >= margin   (non-inferiority: reject = surely less worse than the margin).
    Numerator: the product of the two arms' Beta(1/2, 1/2) mixtures (the Jeffreys mixture of the CS above);
    denominator: the likelihood maximised over H0, attained on the line rate1 - rate0 = margin whenever the
    unconstrained maximum lies outside H0 (the binomial log-likelihood is jointly concave); otherwise the e-value
    is at most 1 and the test cannot reject (0 returned). Exact and non-asymptotic for any interleaving of the
    arms: it decides rare-event guardrails (5% errors against ~0.1%) within a few events."""
    s1, n1, s0, n0 = (np.asarray(x, dtype=float) for x in (s1, n1, s0, n0))
    d_hat = np.divide(s1, n1, out=np.zeros_like(s1), where=n1 > 0) - np.divide(s0, n0, out=np.zeros_like(s0),
                                                                                 where=n0 > 0)
    outside = (d_hat > margin) if side == "above" else (d_hat < margin)
    outside &= (n1 > 0) & (n0 > 0)
    log_e = log_mixture_evidence(s1, n1) + log_mixture_evidence(s0, n0) - _profile_loglik(s1, n1, s0, n0, margin)
    return np.where(outside, np.maximum(log_e, 0.0), 0.0)


def count_cs(n, q: float, alpha: float):
    """(s_lo, s_hi): every count of successes of Binomial(n, q) not rejected by the mixture martingale at alpha;
    the true count stays inside for all n at once with probability >= 1 - alpha. Scalar n."""
    n = int(n)
    s = np.arange(n + 1, dtype=float)
    inside = np.nonzero(_log_mixture(s, float(n), q) < np.log(1.0 / alpha))[0]
    if inside.size == 0:  # cannot happen for a proper mixture (M <= 1 at the MLE); be safe
        return 0, n
    return int(inside[0]), int(inside[-1])


def quantile_cs(values, q: float, alpha: float) -> tuple[float, float]:
    """(lo, hi) for the q-quantile of the distribution the values come from, valid at every n at once
    (Howard & Ramdas 2022). Too few values give -inf / inf."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    if n == 0:
        return float("-inf"), float("inf")
    s_lo, s_hi = count_cs(n, q, alpha)
    lo = float(x[s_lo - 1]) if s_lo >= 1 else float("-inf")
    hi = float(x[s_hi]) if s_hi + 1 <= n else float("inf")
    return lo, hi


# conditional test: the grid of relative risks theta > 1 mixed over (equal weights, uniform in log theta)
THETA_GRID = np.exp(np.linspace(np.log(1.05), np.log(1000.0), 96))


def conditional_log_e(k1, k0, shares):
    """log e-value of a design-based test that the challenger raises a per-request event rate (errors): under
    H0 ("the arm does not raise the chance of an event") an event's request went to the challenger with at most
    the probability it was assigned with, the step's share pi, whatever the (unknown, possibly drifting) event
    rate. Each event multiplies the likelihood ratio of relative risk theta by theta / (pi theta + 1 - pi) (challenger)
    or 1 / (pi theta + 1 - pi) (champion); the mixture over theta in THETA_GRID is a non-negative supermartingale
    under H0, so Ville's inequality makes "log e >= log(1/alpha)" a valid test at every look (the conditional
    binomial / MaxSPRT idea of Kulldorff, Davis, Kolczak et al. 2011, "A maximized sequential probability ratio test
    for drug and vaccine safety surveillance", Sequential Analysis, with a mixture in place of the maximum so
    that Ville applies). The champion's rate is never estimated, so a rare-event guardrail (5% errors against
    ~0.1%) decides within a handful of challenger errors. `k1`, `k0`: events on each arm per step (shape
    (..., steps)); `shares`: the challenger share of each step."""
    k1 = np.asarray(k1, dtype=float)
    k0 = np.asarray(k0, dtype=float)
    pi = np.asarray(shares, dtype=float)
    theta = THETA_GRID
    # (..., steps, grid)
    denom = np.log(pi[..., None] * theta + 1.0 - pi[..., None])
    log_lr = (k1.sum(axis=-1)[..., None] * np.log(theta)
              - ((k1 + k0)[..., None] * denom).sum(axis=-2))
    m = log_lr.max(axis=-1)
    log_e = m + np.log(np.exp(log_lr - m[..., None]).mean(axis=-1))
    return np.maximum(log_e, 0.0)


# --- verdicts (vectorised; the analysis and the benchmark both use these) -------------------------------------
INSUFFICIENT, UNDECIDED, WORSE, NON_INFERIOR = 0, 1, 2, 3
STATUS_NAMES = {INSUFFICIENT: "insufficient_data", UNDECIDED: "undecided", WORSE: "worse",
                NON_INFERIOR: "non_inferior"}


def rate_guardrail(s1, n1, s0, n0, *, margin: float, alpha: float, tuned_n: float, floor: int, by_step=None):
    """WORSE where challenger - champion is surely above `margin`: the normal-mixture CS (alpha/2) lies above it,
    or an exact test (alpha/2) rejects "difference <= margin"; INSUFFICIENT where an arm has fewer than `floor`
    observations; else UNDECIDED. The exact test is the design-based `conditional_log_e` when `by_step` =
    (events1_per_step, events0_per_step, shares) is given (a canary's per-request metric with margin 0), else the
    universal-inference `ui_log_e`. Returns (status, lo, hi, log_e): the CS and the e-value."""
    lo, hi = normal_mixture_diff_cs(s1, n1, s0, n0, alpha / 2, tuned_n)
    if by_step is not None and margin == 0:
        log_e = conditional_log_e(*by_step)
    else:
        log_e = ui_log_e(s1, n1, s0, n0, margin, "above")
    sure = (lo > margin) | (log_e >= np.log(2.0 / alpha))
    enough = (np.asarray(n1) >= floor) & (np.asarray(n0) >= floor)
    status = np.where(~enough, INSUFFICIENT, np.where(sure, WORSE, UNDECIDED))
    return status, lo, hi, log_e


def rate_noninferior(s1, n1, s0, n0, *, margin: float, alpha: float, tuned_n: float, floor: int):
    """NON_INFERIOR where challenger - champion is surely below `margin` (the CS's upper end, or the
    universal-inference test of "difference >= margin", each at alpha/2). A step needs every success metric
    non-inferior (an intersection-union test), so each is tested at the full alpha."""
    lo, hi = normal_mixture_diff_cs(s1, n1, s0, n0, alpha / 2, tuned_n)
    log_e = ui_log_e(s1, n1, s0, n0, margin, "below")
    sure = (hi < margin) | (log_e >= np.log(2.0 / alpha))
    enough = (np.asarray(n1) >= floor) & (np.asarray(n0) >= floor)
    status = np.where(~enough, INSUFFICIENT, np.where(sure, NON_INFERIOR, UNDECIDED))
    return status, lo, hi, log_e


def quantile_ratio_cs(values1, values0, q: float, alpha: float) -> tuple[float, float]:
    """(lo, hi) for quantile1 / quantile0 - 1 (relative increase), from the two arms' CSs at alpha/2 each."""
    lo1, hi1 = quantile_cs(values1, q, alpha / 2)
    lo0, hi0 = quantile_cs(values0, q, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = lo1 / hi0 - 1 if np.isfinite(hi0) and hi0 > 0 and np.isfinite(lo1) else float("-inf")
        hi = hi1 / lo0 - 1 if np.isfinite(hi1) and np.isfinite(lo0) and lo0 > 0 else float("inf")
    return float(lo), float(hi)
