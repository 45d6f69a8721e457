"""Build the drift stage's demo windows from ../shared/data (run once by a maintainer; the output is committed).

Usage: python data/sample/windows/make_windows.py [SHARED_DATA_DIR]
Deterministic (seed 20261202): rerunning gives byte-identical files.

- current.jsonl: a "no drift" window shaped like the training corpus: held-out GPTeacher roleplay and codegen
  records (drawn under the same length filters as data/sample/raw, never one of the records there) and English
  Wikipedia paragraphs that are new to the corpus. XQuAD's 240 English paragraphs (SQuAD v1.1 dev) are all in
  data/sample/raw, so the paragraphs come from AdversarialQA (Bartolo et al. 2020, CC BY-SA 3.0), whose contexts
  are SQuAD v1.1 train paragraphs: the same kind of text, other articles. They are read from the three
  `adversarial_qa_*_based_on` templates of ../shared/data/corpus/t0_train_50k. (An earlier window re-sent XQuAD
  paragraphs the corpus already had: more familiar than the reference, it made a two-sided OOV test alarm.)
- drifted_xquad_de.jsonl: a drifted window: German XQuAD paragraphs and questions (a language and topic shift).
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent
SEED = 20261202
N_ROLEPLAY, N_CODEGEN, N_WIKI = 57, 57, 46  # the shares of the sample corpus (300 : 300 : 240)
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
    shipped = {json.loads(line)["text"] for line in (SAMPLE / "raw" / "xquad_en_paragraphs.jsonl").read_text().splitlines()}
    contexts: dict[str, str] = {}
    for file in sorted((shared / "corpus" / "t0_train_50k" / "data_per_template").glob("adversarial_qa_*_based_on.jsonl")):
        for line in file.read_text().splitlines():
            m = re.search(r"\nContext: (.*)\n$", json.loads(line)["prompt"], re.S)
            if m and m.group(1) not in shipped:
                contexts.setdefault(m.group(1), f"adversarial_qa-{file.name.split('_')[2]}-{len(contexts):03d}")
    for text in rng.sample(sorted(contexts), N_WIKI):
        rows.append({"source": "adversarial_qa_wikipedia", "id": contexts[text], "title": None, "text": text})
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
