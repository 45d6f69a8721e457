"""Benchmark: PII detection recall and precision per entity type on presidio-research's generated data.

Data: ../shared/data/pii/presidio_generated (generated_small.json + generated_large.json, 2,209 texts, MIT),
each with gold spans (entity type, offsets). Only the types this project detects are scored; the detector is
`pipelines.data.pii.detect`, exactly what the ingest stage runs inside its pandas UDF.

Scoring (span overlap, the usual presidio-research "any overlap" criterion):
  recall    = gold spans of type T overlapped by a predicted span of type T / gold spans of type T
  precision = predicted spans of type T overlapping a gold span of type T / predicted spans of type T
A prediction overlapping a gold span of another type (a phone detector firing on an address) is a false
positive. `leaked` counts gold spans with characters left unredacted by any placeholder.

    .venv/bin/python bench/bench_pii.py            # writes bench/results/pii.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "pii" / "presidio_generated"
FILES = ("generated_small.json", "generated_large.json")
# presidio entity type -> this project's entity type
GOLD_TO_OURS = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD",
                "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "US_SSN"}


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def score(records: list[dict]) -> dict:
    from pipelines.data.pii import detect

    stats = {t: {"gold": 0, "found": 0, "predicted": 0, "correct": 0, "leaked": 0} for t in GOLD_TO_OURS.values()}
    other_fp: dict[str, int] = {}
    examples: dict[str, list] = {"missed": [], "false_positive": []}
    t0 = time.perf_counter()
    preds_all = [detect(r["full_text"]) for r in records]
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
                if len(examples["missed"]) < 40:
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
            elif len(examples["false_positive"]) < 40:
                hit = [gt for g0, g1, gt in gold if _overlap(g0, g1, p.start, p.end)]
                examples["false_positive"].append([p.entity, p.text, hit[0] if hit else None])
    per_type = {}
    for t, s in stats.items():
        per_type[t] = {
            **s,
            "recall": round(s["found"] / s["gold"], 4) if s["gold"] else None,
            "precision": round(s["correct"] / s["predicted"], 4) if s["predicted"] else None,
        }
    tot = {k: sum(s[k] for s in stats.values()) for k in ("gold", "found", "predicted", "correct", "leaked")}
    micro = {**tot, "recall": round(tot["found"] / tot["gold"], 4),
             "precision": round(tot["correct"] / tot["predicted"], 4)}
    return {"per_type": per_type, "micro": micro, "other_types_predicted": other_fp, "examples": examples,
            "detect_seconds": round(seconds, 3), "texts_per_s": round(len(records) / seconds, 1)}


def main() -> dict:
    if not DATA.exists():
        raise SystemExit(f"presidio_generated not found at {DATA}")
    records = [r for f in FILES for r in json.loads((DATA / f).read_text())]
    result = {"data": str(DATA.relative_to(REPO.parent)), "files": list(FILES), "texts": len(records),
              "criterion": "span overlap, same entity type", **score(records)}
    out = REPO / "bench" / "results" / "pii.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for t, s in result["per_type"].items():
        print(f"{t:12s} gold {s['gold']:4d}  recall {s['recall']}  precision {s['precision']}  leaked {s['leaked']}")
    print(f"micro: recall {result['micro']['recall']} precision {result['micro']['precision']}; "
          f"{result['texts_per_s']} texts/s; other types predicted: {result['other_types_predicted']}")
    return result


if __name__ == "__main__":
    main()
