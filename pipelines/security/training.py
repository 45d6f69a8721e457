"""Train one detector: features, candidate heads compared on the validation split, threshold chosen on validation,
metrics on the held-out (by source) test split, model file + meta + model card."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipelines.io import write_json, write_text
from pipelines.security import features as F
from pipelines.security.datasets import is_context
from pipelines.security.detectors import KINDS, Head, auroc, choose_threshold, fit_head, rates_at


def featurize(name: str, rows: list[dict], enc: F.Encoder) -> np.ndarray:
    if KINDS[name] == "text":
        return F.text_features(enc, [r["text"] for r in rows])
    return F.pair_features(enc, [r["request"] for r in rows], [r["response"] for r in rows])


class Scorer:
    """Validation/test features computed once; text detectors score a text as the max over its chunks, as
    `Detector.score` does at serving time."""

    def __init__(self, name: str, rows: list[dict], enc: F.Encoder):
        self.n = len(rows)
        if KINDS[name] == "text":
            self.X, self.owner = F.chunked_text_features(enc, [r["text"] for r in rows])
        else:
            self.X, self.owner = featurize(name, rows, enc), list(range(len(rows)))

    def __call__(self, head: Head) -> np.ndarray:
        best = np.zeros(self.n)
        np.maximum.at(best, np.array(self.owner), head.predict(self.X))
        return best


def _recall_at_fpr(y, s, max_fpr) -> float:
    t, _ = choose_threshold(y, s, "max_fpr", max_fpr)
    return rates_at(y, s, t)["recall"] or 0.0


def per_source(rows: list[dict], s: np.ndarray, threshold: float | np.ndarray) -> dict:
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), s.shape)  # one threshold, or one per row
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["source"]].append(i)
    out = {}
    for src, idx in sorted(groups.items()):
        y = np.array([rows[i]["label"] for i in idx])
        flagged = int(np.sum(s[idx] >= thr[idx]))
        out[src] = {"n": len(idx), "label": int(y[0]) if len(set(y)) == 1 else "mixed",
                    "flagged_rate": round(flagged / len(idx), 4)}
    return out


def train_detector(name: str, rows: list[dict], enc: F.Encoder, *, heads: list[str], threshold_rule: str,
                   max_fpr: float | None, seed: int, extra_negatives: dict[str, list[str]] | None = None) -> dict:
    """Returns {head, threshold, metrics...}; the fitted Head under key `_head` (not JSON)."""
    t0 = time.perf_counter()
    splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    for s, rs in splits.items():
        labels = {r["label"] for r in rs}
        if labels != {0, 1}:
            raise ValueError(f"train_guard: {name} {s} split needs both classes, has {sorted(labels)} ({len(rs)} rows)")
    X = {"train": featurize(name, splits["train"], enc)}
    scorer = {s: Scorer(name, splits[s], enc) for s in ("val", "test")}
    y = {s: np.array([r["label"] for r in rs]) for s, rs in splits.items()}
    feat_s = time.perf_counter() - t0
    candidates = {}
    for h in heads:
        head = fit_head(h, X["train"], y["train"], seed)
        sv = scorer["val"](head)
        candidates[h] = {"head": head, "val_auroc": auroc(y["val"], sv),
                         "val_recall_at_fpr": _recall_at_fpr(y["val"], sv, max_fpr or 0.05)}
    key = (lambda h: (candidates[h]["val_recall_at_fpr"], candidates[h]["val_auroc"] or 0)) \
        if threshold_rule == "max_fpr" else (lambda h: (candidates[h]["val_auroc"] or 0,))
    chosen = max(heads, key=key)
    head: Head = candidates[chosen]["head"]
    sv, st = scorer["val"](head), scorer["test"](head)
    threshold, how = choose_threshold(y["val"], sv, threshold_rule, max_fpr)
    row_thr = {"val": threshold, "test": threshold}
    context: dict = {}
    ctx = {sp: np.array([is_context(r) for r in splits[sp]], dtype=bool) for sp in ("val", "test")}
    if name == "injection" and ctx["val"].any() and (~ctx["val"]).any():
        # Two operating points: a user's prompt and a retrieved document are different populations (a clean e-mail
        # reads like an instruction far more often than a question does), and one threshold for both either blocks
        # most RAG requests over e-mail or lets direct attacks through. Each is chosen on its own validation rows.
        threshold, how = choose_threshold(y["val"][~ctx["val"]], sv[~ctx["val"]], threshold_rule, max_fpr)
        how = f"user prompts: {how}"
        t_ctx, how_ctx = choose_threshold(y["val"][ctx["val"]], sv[ctx["val"]], threshold_rule, max_fpr)
        row_thr = {sp: np.where(ctx[sp], t_ctx, threshold) for sp in ("val", "test")}
        context = {"threshold_context": round(t_ctx, 6), "threshold_context_choice": f"retrieved contexts: {how_ctx}"}
        for sp, sc in (("val", sv), ("test", st)):
            context[f"{sp}_prompts"] = rates_at(y[sp][~ctx[sp]], sc[~ctx[sp]], threshold)
            context[f"{sp}_contexts"] = rates_at(y[sp][ctx[sp]], sc[ctx[sp]], t_ctx)
    result = {
        "name": name,
        "kind": KINDS[name],
        "head": chosen,
        "candidates": {h: {"val_auroc": _r(c["val_auroc"]), f"val_recall_at_fpr_{max_fpr or 0.05}": _r(c["val_recall_at_fpr"])}
                       for h, c in candidates.items()},
        "selection": "validation recall at the FPR budget, then AUROC" if threshold_rule == "max_fpr"
                     else "validation AUROC",
        "threshold": round(threshold, 6),
        "threshold_rule": threshold_rule,
        "threshold_choice": how,
        **context,
        "n": {s: {"rows": len(rs), "positives": int(y[s].sum())} for s, rs in splits.items()},
        "sources": {s: sorted({r["source"] for r in rs}) for s, rs in splits.items()},
        # val/test: each row at its own operating point (a retrieved context at threshold_context)
        "val": {**rates_at(y["val"], sv, row_thr["val"]), "auroc": _r(auroc(y["val"], sv))},
        "test": {**rates_at(y["test"], st, row_thr["test"]), "auroc": _r(auroc(y["test"], st))},
        "test_per_source": per_source(splits["test"], st, row_thr["test"]),
        "feature_seconds": round(feat_s, 2),
        "_head": head,
    }
    if name == "harmful_compliance":
        kinds: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(splits["test"]):
            kinds[r["kind"]].append(i)
        result["test_per_kind"] = {k: {"n": len(idx), "flagged_rate": round(float(np.mean(st[idx] >= threshold)), 4)}
                                   for k, idx in sorted(kinds.items())}
    for label, texts in (extra_negatives or {}).items():
        if texts:
            Xc, owner = F.chunked_text_features(enc, texts)
            s = np.zeros(len(texts))
            np.maximum.at(s, np.array(owner), head.predict(Xc))
            result[f"fpr_{label}"] = round(float(np.mean(s >= threshold)), 4)
            result[f"flagged_{label}"] = [t for t, v in zip(texts, s) if v >= threshold]
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _r(x):
    return None if x is None else round(float(x), 4)


def _rates(r: dict) -> str:
    return f"precision {r['precision']}, recall {r['recall']}, FPR {r['fpr']} (n={r['n']})"


def model_card(res: dict, data_desc: str) -> str:
    t = res["test"]
    lines = [
        f"# Model card: guard detector `{res['name']}`",
        "",
        f"- Input: {'one text (prompt or response)' if res['kind'] == 'text' else '(request, response) pair'}, "
        "normalized (NFKC, zero-width and homoglyph folding, base64/rot13/leetspeak decoded), head+tail window of "
        f"{F.WINDOW_CHARS} characters.",
        "- Features: all-MiniLM-L6-v2 sentence embedding (384) + lexical cues "
        f"({', '.join(F.LEXICAL_NAMES)})" + ("; for pairs: both embeddings, their product and cosine." if res["kind"] == "pair" else "."),
        f"- Head: `{res['head']}`, chosen by {res['selection']} among {res['candidates']}.",
        f"- Threshold: {res['threshold']} ({res['threshold_choice']})"
        + (f"; retrieved contexts: {res['threshold_context']} ({res['threshold_context_choice']})."
           if "threshold_context" in res else "."),
        f"- Data: {data_desc}. Split by source: train {res['sources']['train']}; val {res['sources']['val']}; "
        f"test {res['sources']['test']}.",
        f"- Sizes: {res['n']}.",
        "",
        "## Held-out test (sources never seen in training)",
        "",
        "| precision | recall | FPR | F1 | AUROC | n |",
        "|---|---|---|---|---|---|",
        f"| {t['precision']} | {t['recall']} | {t['fpr']} | {t['f1']} | {t['auroc']} | {t['n']} |",
        "",
        *([f"User prompts alone: {_rates(res['test_prompts'])}. Retrieved contexts alone (at their threshold): "
           f"{_rates(res['test_contexts'])}.", ""] if "test_prompts" in res else []),
        "Flagged rate per test source: " + ", ".join(f"{k} {v['flagged_rate']} (n={v['n']}, label {v['label']})"
                                                    for k, v in res["test_per_source"].items()),
        "",
    ]
    if "fpr_over_refusal" in res:
        lines += [f"Over-refusal set (benign prompts that look dangerous): FPR {res['fpr_over_refusal']}; flagged: "
                  f"{res['flagged_over_refusal'][:10]}", ""]
    lines += [
        "## Limits",
        "",
        "- Trained on public English attack corpora; new attack styles, other languages and very long multi-turn "
        "setups can slip through. The threshold is set on the validation sources, not on live traffic.",
    ]
    if res["name"] == "harmful_compliance":
        lines.append("- Compliant and refusing responses are templated (`pipelines/security/datasets.py`), split by "
                     "template between train/val/test: the judge learns 'affirmative, on-topic answer to a harmful "
                     "request' vs refusal/off-topic/benign, not the harmfulness of real detailed content.")
    if res["name"] == "toxicity":
        lines.append("- Davidson is one source (tweets): the split is a seeded hash split, not by source; "
                     "'offensive' includes casual profanity.")
    return "\n".join(lines) + "\n"


def save(res: dict, out_dir: Path, encoder_meta: dict, data_desc: str) -> None:
    d = out_dir / res["name"]
    d.mkdir(parents=True, exist_ok=True)
    res["_head"].save(d / "model.npz")
    meta = {k: v for k, v in res.items() if not k.startswith("_") and not k.startswith("flagged_")}
    meta["encoder"] = encoder_meta
    meta["window_chars"] = F.WINDOW_CHARS
    meta["lexical_features"] = F.LEXICAL_NAMES
    write_json(str(d / "meta.json"), meta)
    write_text(str(d / "card.md"), model_card(res, data_desc))


def summary_row(res: dict) -> dict:
    t = res["test"]
    return {"head": res["head"], "threshold": res["threshold"], "precision": t["precision"], "recall": t["recall"],
            "fpr": t["fpr"], "f1": t["f1"], "auroc": t["auroc"], "n_test": t["n"],
            **({"fpr_over_refusal": res["fpr_over_refusal"]} if "fpr_over_refusal" in res else {})}


def report_markdown(results: dict[str, dict], seconds: float, data_desc: str) -> str:
    lines = ["# Guard detectors (train_guard)", "", f"Data: {data_desc}. Trained in {seconds:.1f} s.", "",
             "| detector | head | threshold | precision | recall | FPR | F1 | AUROC | n test | over-refusal FPR |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = summary_row(r)
        lines.append(f"| {name} | {s['head']} | {s['threshold']:.4f} | {s['precision']} | {s['recall']} | {s['fpr']} | "
                     f"{s['f1']} | {s['auroc']} | {s['n_test']} | {s.get('fpr_over_refusal', '')} |")
    lines += ["", "Test splits hold sources never seen in training (see each model card).", ""]
    for name, r in results.items():
        lines += [f"## {name}", "", f"Candidates (validation): {json.dumps(r['candidates'])}; chosen `{r['head']}`; "
                  f"threshold {r['threshold']} - {r['threshold_choice']}.", "",
                  "| test source | n | label | flagged rate |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['label']} | {v['flagged_rate']} |" for k, v in r["test_per_source"].items()]
        if "test_per_kind" in r:
            lines += ["", "| pair kind | n | flagged rate |", "|---|---|---|"]
            lines += [f"| {k} | {v['n']} | {v['flagged_rate']} |" for k, v in r["test_per_kind"].items()]
        lines.append("")
    return "\n".join(lines)
