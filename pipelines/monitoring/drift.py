"""The drift decision: several two-sample tests of a current window against the reference, one family-wise alarm.

Every test gives a p-value under "same distribution" (the null):

| test | what | p-value |
|---|---|---|
| embedding_classifier | domain-classifier ROC AUC (Evidently's embedding method) | one-sided Mann-Whitney, held-out scores |
| embedding_mmd | MMD^2, RBF kernel (alibi-detect's MMDDrift) | permutation |
| length | log(1 + characters) | two-sample Kolmogorov-Smirnov |
| language | py3langid language shares | chi-square (sparse languages merged) |
| pii | share of texts with a PII entity (pipelines/data/pii.py) | one-sided Fisher's exact test (more PII) |
| toxicity | lexicon toxicity score (placeholder, see descriptors.py) | one-sided Mann-Whitney (more toxic) |
| oov | out-of-vocabulary word rate, vocabulary from a held-out part of the reference | one-sided Mann-Whitney (more OOV) |
| topics | k-means topic shares (fitted on the held-out part) | chi-square |

Three tests are one-sided because only one direction means the model meets something it was not trained on: a
window whose words are MORE familiar than the reference's (lower OOV rate; e.g. a batch that re-sends documents
the corpus already has), less toxic or with less PII is not drift. Two-sided, the OOV test alarmed at p = 1.3e-5
on a window of re-sent training paragraphs (OOV rate 0.10 vs the reference's 0.13): a false alarm. Length,
language, topics and the embedding tests stay two-sided (shorter and longer, or any change of mix, both matter).

The window is "drifted" when any test's p-value is below alpha / (number of tests run) (Bonferroni): the chance of
a false alarm on a same-distribution window is then at most alpha whatever the dependence between the tests
(bench/bench_drift.py measures it, and the power for injected shifts). A window with fewer than `min_window` texts,
on either side, is "insufficient_data": no test runs and it is never an alarm.

Why not Evidently (0.7.23 is installed and fits the lock; measured here): `import evidently` alone took 11.5 s on
this machine (a third of the drift stage's budget); its embedding-drift methods (`model`, `mmd`, `distance`,
`ratio`) return a boolean against a fixed threshold (AUC 0.55, MMD 0.015) or a bootstrap quantile, never a p-value,
so they cannot enter a multiple-testing correction and their false alarm rate is whatever the threshold gives at a
window size (bench/bench_drift.py measures the `model` method's with its defaults); its column tests are scipy's
(KS, chi-square) behind a DataFrame/report layer. So the tests are built on scipy and scikit-learn directly.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Sequence, TypedDict

import numpy as np
from pydantic import Field

from pipelines.config import StageConfig
from pipelines.monitoring import descriptors as desc
from pipelines.monitoring.embedding_drift import (TestResult, chi_square_shares, classifier_test, mmd_test,
                                                  topic_test)
from pipelines.monitoring.windows import TextWindow

TestName = Literal["embedding_classifier", "embedding_mmd", "length", "language", "pii", "toxicity", "oov", "topics"]
ALL_TESTS: tuple[str, ...] = ("embedding_classifier", "embedding_mmd", "length", "language", "pii", "toxicity",
                              "oov", "topics")
EMBEDDING_TESTS = {"embedding_classifier", "embedding_mmd", "topics"}
INSUFFICIENT = "insufficient_data"


class DriftSettings(StageConfig):
    tests: list[TestName] = Field(min_length=1)
    alpha: float = Field(gt=0, lt=1)  # family-wise false alarm rate
    min_window: int = Field(ge=10)  # fewer texts on either side: "insufficient_data"
    max_window: int = Field(ge=10)  # larger windows are subsampled (seeded) to bound the cost
    seed: int
    permutations: int = Field(ge=99)  # MMD permutations (min p-value 1 / (1 + permutations))
    classifier_train_fraction: float = Field(gt=0, lt=1)  # the rest is held out for the AUC
    topic_clusters: int = Field(ge=2)
    fit_fraction: float = Field(gt=0, lt=1)  # reference share held out for the vocabulary and the k-means topics
    language_min_chars: int = Field(ge=0)  # shorter texts count as "und"
    toxicity_lexicon: str | None  # null: the shipped placeholder lexicon
    pii_entities: list[str] | None  # null: every entity the redactor knows


class TestOutcome(TypedDict):
    statistic: float | None
    p_value: float | None
    drifted: bool
    detail: dict[str, Any]


class DriftResult(TypedDict):
    status: str  # ok | insufficient_data
    drifted: bool
    reason: str | None
    n_reference: int
    n_current: int
    min_window: int
    alpha: float
    correction: str
    threshold: float | None  # per-test p-value threshold (alpha / tests)
    tests: dict[str, TestOutcome]
    triggered: list[str]  # tests under the threshold
    descriptors: dict[str, dict[str, Any]]  # reference vs current summary per descriptor (the report's tables)
    seconds: float


def _subsample(win: TextWindow, limit: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray | None]:
    idx = np.arange(win.n)
    if win.n > limit:
        idx = np.sort(rng.choice(win.n, size=limit, replace=False))
    texts = [win.texts[i] for i in idx]
    vecs = None if win.vectors is None else np.asarray(win.vectors)[idx]
    return texts, vecs


def _mwu(a: Sequence[float], b: Sequence[float],
         alternative: Literal["two-sided", "greater"] = "two-sided") -> tuple[float, float]:
    """AUC of current (`b`) over reference (`a`) and the Mann-Whitney p-value; "greater": H1 is b > a."""
    from scipy.stats import mannwhitneyu

    if np.ptp(np.r_[a, b]) == 0:  # all equal (e.g. no toxic word anywhere): nothing to test
        return 0.5, 1.0
    res = mannwhitneyu(b, a, alternative=alternative)
    return float(res.statistic) / (len(a) * len(b)), float(res.pvalue)


def _summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": round(float(arr.mean()), 4), "median": round(float(np.median(arr)), 4),
            "p10": round(float(np.quantile(arr, 0.1)), 4), "p90": round(float(np.quantile(arr, 0.9)), 4)}


def insufficient(reference: TextWindow, current: TextWindow, cfg: DriftSettings) -> DriftResult | None:
    small = [(w, side) for w, side in ((reference, "reference"), (current, "current")) if w.n < cfg.min_window]
    if not small:
        return None
    reason = "; ".join(f"{side} window has {w.n} texts, at least {cfg.min_window} needed" for w, side in small)
    return {"status": INSUFFICIENT, "drifted": False, "reason": f"not enough data: {reason}",
            "n_reference": reference.n, "n_current": current.n, "min_window": cfg.min_window, "alpha": cfg.alpha,
            "correction": "bonferroni", "threshold": None, "tests": {}, "triggered": [], "descriptors": {},
            "seconds": 0.0}


def detect_drift(reference: TextWindow, current: TextWindow, cfg: DriftSettings) -> DriftResult:
    """Compare `current` with `reference`; both need `.vectors` when an embedding test is configured."""
    started = time.perf_counter()
    if (early := insufficient(reference, current, cfg)) is not None:
        return early
    if EMBEDDING_TESTS & set(cfg.tests) and (reference.vectors is None or current.vectors is None):
        raise ValueError("detect_drift: embedding tests configured but a window has no vectors (embed it first)")
    rng = np.random.default_rng(cfg.seed)
    ref_texts, ref_vecs = _subsample(reference, cfg.max_window, rng)
    cur_texts, cur_vecs = _subsample(current, cfg.max_window, rng)
    # The held-out "fit" part of the reference: vocabulary and topics are learnt there, and the rest of the
    # reference is as new to them as the current window is.
    perm = rng.permutation(len(ref_texts))
    n_fit = int(round(cfg.fit_fraction * len(ref_texts)))
    fit_idx, cmp_idx = np.sort(perm[:n_fit]), np.sort(perm[n_fit:])

    results: dict[str, TestResult] = {}
    descriptors: dict[str, dict[str, Any]] = {}
    for name in cfg.tests:
        if name == "embedding_classifier":
            results[name] = classifier_test(ref_vecs, cur_vecs, cfg.classifier_train_fraction, cfg.seed)
        elif name == "embedding_mmd":
            results[name] = mmd_test(ref_vecs, cur_vecs, cfg.permutations, cfg.seed)
        elif name == "topics":
            results[name] = topic_test(ref_vecs[fit_idx], ref_vecs[cmp_idx], cur_vecs, cfg.topic_clusters, cfg.seed)
            descriptors["topics"] = {"shares": results[name]["detail"]["shares"]}
        elif name == "length":
            from scipy.stats import ks_2samp

            a, b = desc.log_lengths(ref_texts), desc.log_lengths(cur_texts)
            res = ks_2samp(a, b)
            ra, rb = [len(t) for t in ref_texts], [len(t) for t in cur_texts]
            descriptors["length"] = {"reference": _summary(ra), "current": _summary(rb), "unit": "characters"}
            results[name] = {"statistic": round(float(res.statistic), 4), "p_value": float(res.pvalue),
                             "detail": {"median_chars_reference": float(np.median(ra)),
                                        "median_chars_current": float(np.median(rb))}}
        elif name == "language":
            la = desc.languages(ref_texts, cfg.language_min_chars)
            lb = desc.languages(cur_texts, cfg.language_min_chars)
            results[name] = chi_square_shares(la, lb)
            descriptors["language"] = {"shares": results[name]["detail"]["shares"]}
        elif name == "pii":
            from scipy.stats import fisher_exact

            fa = desc.pii_flags(ref_texts, cfg.pii_entities)
            fb = desc.pii_flags(cur_texts, cfg.pii_entities)
            table = [[sum(fa), len(fa) - sum(fa)], [sum(fb), len(fb) - sum(fb)]]
            _, p = fisher_exact(table, alternative="less")  # H1: the current window has more PII (odds ratio < 1)
            rate_a, rate_b = sum(fa) / len(fa), sum(fb) / len(fb)
            descriptors["pii"] = {"reference": {"rate": round(rate_a, 4)}, "current": {"rate": round(rate_b, 4)}}
            results[name] = {"statistic": round(rate_b - rate_a, 4), "p_value": float(p),
                             "detail": {"rate_reference": round(rate_a, 4), "rate_current": round(rate_b, 4)}}
        elif name == "toxicity":
            scorer = desc.ToxicityScorer(cfg.toxicity_lexicon)
            sa, sb = scorer.score(ref_texts), scorer.score(cur_texts)
            auc, p = _mwu(sa, sb, "greater")  # a less toxic window is not drift
            flag_a = sum(1 for s in sa if s > 0) / len(sa)
            flag_b = sum(1 for s in sb if s > 0) / len(sb)
            descriptors["toxicity"] = {"reference": {"mean": round(float(np.mean(sa)), 5), "flagged": round(flag_a, 4)},
                                       "current": {"mean": round(float(np.mean(sb)), 5), "flagged": round(flag_b, 4)},
                                       "scorer": "lexicon placeholder (issue 15 replaces it)"}
            results[name] = {"statistic": round(auc, 4), "p_value": p,
                             "detail": {"flagged_reference": round(flag_a, 4), "flagged_current": round(flag_b, 4)}}
        elif name == "oov":
            vocab = desc.vocabulary(ref_texts[i] for i in fit_idx)
            oa = desc.oov_rates([ref_texts[i] for i in cmp_idx], vocab)
            ob = desc.oov_rates(cur_texts, vocab)
            auc, p = _mwu(oa, ob, "greater")  # more familiar words than the reference is not drift
            descriptors["oov"] = {"reference": _summary(oa), "current": _summary(ob), "vocabulary": len(vocab)}
            results[name] = {"statistic": round(auc, 4), "p_value": p,
                             "detail": {"mean_reference": round(float(np.mean(oa)), 4),
                                        "mean_current": round(float(np.mean(ob)), 4), "vocabulary": len(vocab)}}
    threshold = cfg.alpha / len(results)
    tests: dict[str, TestOutcome] = {}
    for name, r in results.items():
        p = r["p_value"]
        tests[name] = {"statistic": r["statistic"], "p_value": None if p is None else float(f"{p:.6g}"),
                       "drifted": p is not None and p < threshold, "detail": r["detail"]}
    triggered = [n for n, t in tests.items() if t["drifted"]]
    return {"status": "ok", "drifted": bool(triggered), "reason": None, "n_reference": len(ref_texts),
            "n_current": len(cur_texts), "min_window": cfg.min_window, "alpha": cfg.alpha,
            "correction": "bonferroni", "threshold": threshold, "tests": tests, "triggered": triggered,
            "descriptors": descriptors, "seconds": round(time.perf_counter() - started, 3)}
