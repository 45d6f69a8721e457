"""Build the drift stage's demo windows from ../shared/data (run once by a maintainer; the output is committed).

Usage: python data/sample/windows/make_windows.py [SHARED_DATA_DIR]
Deterministic (seed 20261202): rerunning gives byte-identical files.

- current.jsonl: a "no drift" window shaped like the training corpus: held-out GPTeacher roleplay and codegen
  records (drawn under the same length filters as data/sample/raw, never one of the records there) and English
  XQuAD paragraphs. XQuAD has only 240 English paragraphs and all are in data/sample/raw, so this part of the window
  re-sends paragraphs the corpus already has (a new batch can overlap old data).
- drifted_xquad_de.jsonl: a drifted window: German XQuAD paragraphs and questions (a language and topic shift).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent
SEED = 20261202
N_ROLEPLAY, N_CODEGEN, N_XQUAD = 57, 57, 46  # the shares of the sample corpus (300 : 300 : 240)
N_DRIFTED = 120


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _key(rec: dict) -> tuple:
    return (rec["instruction"].strip().lower(), rec["response"].strip())


def main(shared: Path) -> None:
    rng = random.Random(SEED)
    gpt = shared / "instructions" / "gpteacher"
    rows = []
    for name, file, limit, n in (("gpteacher_roleplay", "Roleplay/roleplay-simple-deduped-roleplay-instruct.json", 700,
                                  N_ROLEPLAY),
                                 ("gpteacher_codegen", "Codegen/codegen-instruct.json", 500, N_CODEGEN)):
        shipped = {_key(r) for r in json.loads((SAMPLE / "raw" / f"{name}.json").read_text())}
        pool = [r for r in json.loads((gpt / file).read_text())
                if len(r["response"]) <= limit and _key(r) not in shipped]
        for rec in rng.sample(pool, n):
            rows.append({"source": name, "instruction": rec["instruction"], "input": rec["input"],
                         "response": rec["response"]})
    paragraphs = [json.loads(line) for line in (SAMPLE / "raw" / "xquad_en_paragraphs.jsonl").read_text().splitlines()]
    for para in rng.sample(paragraphs, N_XQUAD):
        rows.append({"source": "xquad_en", "id": para["id"], "title": para["title"], "text": para["text"]})
    rng.shuffle(rows)
    _write_jsonl(HERE / "current.jsonl", rows)

    de = json.loads((shared / "rag" / "xquad" / "xquad.de.json").read_text())["data"]
    units = []
    for article in de:
        for i, para in enumerate(article["paragraphs"]):
            units.append({"source": "xquad_de", "id": f"{article['title']}#{i}", "text": para["context"]})
            units += [{"source": "xquad_de", "id": qa["id"], "text": qa["question"]} for qa in para["qas"]]
    _write_jsonl(HERE / "drifted_xquad_de.jsonl", rng.sample(units, N_DRIFTED))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[3] / "shared" / "data")
