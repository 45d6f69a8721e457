"""Drift calibration at n=500: false alarm rate on same-distribution splits, power on injected shifts, per test.

Usage: .venv/bin/python bench/bench_drift.py [--n 500] [--null-splits 20] [--shift-splits 20]
Needs ../shared/data (GPTeacher, XQuAD). Writes bench/results/drift_calibration.{json,md}.

Settings are params.yaml's `drift.detector` (the ones the drift stage runs with). Vectors: the platform's MiniLM,
first chunk of `drift.max_tokens` pieces, through the embedding cache `drift.cache_dir` (the first run encodes the
pools, about 7k texts: minutes on 2 cores; later runs read the cache). Alongside, on the same splits, Evidently's
`model` embedding-drift method with its defaults (threshold AUC 0.55) is run, to show why it is not used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipelines.config import config_from_params  # noqa: E402
from pipelines.io import write_json, write_text  # noqa: E402
from pipelines.monitoring import calibration as cal  # noqa: E402
from pipelines.monitoring.drift import DriftSettings  # noqa: E402
from pipelines.monitoring.embedding_drift import WindowEncoder  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
POOL_SIZE = 1200  # instruction records drawn (seeded) from GPTeacher: 2 x 500 per null split, some variety left


def pools():
    import random

    gpt = SHARED / "instructions" / "gpteacher"
    files = [gpt / "Roleplay" / "roleplay-simple-deduped-roleplay-instruct.json", gpt / "Codegen" / "codegen-instruct.json"]
    full = cal.instruction_pool(files, "instructions", max_chars=1200)
    keep = sorted(random.Random(20261202).sample(range(len(full.texts)), POOL_SIZE))
    instr = cal.Pool("instructions", [full.texts[i] for i in keep], [full.ids[i] for i in keep])
    # The same records' prompts (what a user sends): the null of prompt drift on the request log.
    all_prompts = cal.instruction_pool(files, "p", which="prompt")
    prompts_full = dict(zip(all_prompts.ids, all_prompts.texts))
    prm = cal.Pool("instruction_prompts", [], [])
    for i in instr.ids:
        if i in prompts_full:
            prm.texts.append(prompts_full[i])
            prm.ids.append(i)
    short = cal.Pool("instructions_half_length", [cal.truncate(t, 0.5) for t in instr.texts], list(instr.ids))
    en = cal.xquad_pool(SHARED / "rag" / "xquad" / "xquad.en.json", "xquad_en")
    de = cal.xquad_pool(SHARED / "rag" / "xquad" / "xquad.de.json", "xquad_de")
    return instr, prm, short, en, de


def evidently_model_method(scenario, n, splits, seed):
    """Evidently 0.7.23's `model` embedding drift (defaults) on the same draws: share of 'drift' verdicts."""
    import pandas as pd
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    method = model()
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(splits):
        ref, cur = scenario.draw(rng, n)
        _, drifted, _ = method(pd.DataFrame(cur.vectors), pd.DataFrame(ref.vectors))
        verdicts.append(bool(drifted))
    return round(float(np.mean(verdicts)), 4)


def markdown(result) -> str:
    tests = result["settings"]["tests"]
    lines = [
        "# Drift calibration",
        "",
        f"n = {result['n']} texts per window; {result['null_splits']} same-distribution splits per null pool, "
        f"{result['shift_splits']} draws per shift. Decision: drifted when any of {len(tests)} tests has "
        f"p < alpha/{len(tests)} = {result['settings']['alpha'] / len(tests):.5f} (Bonferroni, alpha = "
        f"{result['settings']['alpha']}). Vectors: all-MiniLM-L6-v2, first chunk of {result['max_tokens']} pieces. "
        f"Run: `{result['command']}` ({result['seconds']:.0f} s, of which encoding {result['encode_seconds']:.0f} s).",
        "",
        "Rate = share of splits/draws with an alarm: the false alarm rate for null rows (goal <= 0.05), the power "
        "for shift rows (goal >= 0.9). Per-test columns: that test's own alarm rate at the corrected threshold.",
        "",
        "| scenario | kind | alarm rate | " + " | ".join(tests) + " | evidently model (AUC > 0.55) | median s |",
        "|---|---|---|" + "---|" * len(tests) + "---|---|",
    ]
    for row in result["scenarios"]:
        lines.append(f"| {row['scenario']} | {row['kind']} | **{row['alarm_rate']:.2f}** ({row['alarms']}/"
                     f"{row['splits']}) | " + " | ".join(f"{row['per_test_rate'][t]:.2f}" for t in tests)
                     + f" | {row['evidently_model']:.2f} | {row['median_seconds']:.2f} |")
    lines += ["", "Median p-value per test:", "",
              "| scenario | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
    for row in result["scenarios"]:
        lines.append(f"| {row['scenario']} | " + " | ".join(f"{row['median_p_value'][t]:.3g}" for t in tests) + " |")
    lines += ["", "Scenarios: " + "; ".join(f"**{k}**: {v}" for k, v in result["descriptions"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--null-splits", type=int, default=20)
    ap.add_argument("--shift-splits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "drift_calibration"))
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit(f"bench_drift: {SHARED} not found")
    started = time.perf_counter()
    settings = config_from_params("drift.detector", DriftSettings, {"min_window": 50, "max_window": 10_000})
    import yaml

    dp = yaml.safe_load((REPO / "params.yaml").read_text())["drift"]
    encoder = WindowEncoder(dp["model_package"], dp["model_path"], str(REPO / dp["cache_dir"]), dp["max_tokens"],
                            threads=dp["encode_threads"])
    instr, prm, short, en, de = pools()
    t0 = time.perf_counter()
    cal.embed_pools(encoder, instr, prm, short, en, de)
    encode_seconds = time.perf_counter() - t0
    print(f"encoded {encoder.encoded}, reused {encoder.reused} in {encode_seconds:.0f} s", flush=True)
    en_a, de_b = cal.id_half(en, 0), cal.id_half(de, 1)
    scenarios = [
        (cal.null_scenario("null: instructions", instr), args.null_splits),
        (cal.null_scenario("null: instruction prompts", prm), args.null_splits),
        (cal.null_scenario("null: XQuAD en", en), args.null_splits),
        (cal.shift_scenario("topic: instructions -> XQuAD en", instr, en), args.shift_splits),
        (cal.paired_shift_scenario("length: instructions -> cut to 50%", instr, short), args.shift_splits),
        (cal.shift_scenario("language: XQuAD en -> XQuAD de", en, de, en_a, de_b), args.shift_splits),
    ]
    descriptions = {
        "instructions": f"{POOL_SIZE} GPTeacher roleplay + codegen records (total <= 1200 chars), text = "
                        "prompt + response as ingest joins them",
        "instruction prompts": "the prompts of those records (the request log's field)",
        "XQuAD en": f"{len(en.texts)} English XQuAD units (240 paragraphs + 1190 questions)",
        "length": "the current window's texts cut to their first 50% of characters (at a word start)",
        "language": "reference English units with ids in one hash half, current German units of the other half",
    }
    rows = []
    for k, (scenario, splits) in enumerate(scenarios):
        t1 = time.perf_counter()
        row = cal.run_scenario(scenario, settings, args.n, splits, args.seed + k)
        row["evidently_model"] = evidently_model_method(scenario, args.n, splits, args.seed + k)
        rows.append(row)
        print(f"{row['scenario']}: alarm rate {row['alarm_rate']} per test {row['per_test_rate']} "
              f"evidently {row['evidently_model']} ({time.perf_counter() - t1:.0f} s)", flush=True)
    result = {
        "n": args.n, "null_splits": args.null_splits, "shift_splits": args.shift_splits, "seed": args.seed,
        "max_tokens": dp["max_tokens"], "settings": settings.model_dump(), "scenarios": rows,
        "descriptions": descriptions, "encode_seconds": round(encode_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python bench/bench_drift.py " + " ".join(sys.argv[1:]),
        "false_alarm_rate_max": max(r["alarm_rate"] for r in rows if r["kind"] == "null"),
        "power_min": min(r["alarm_rate"] for r in rows if r["kind"] == "shift"),
    }
    write_json(args.out + ".json", result)
    write_text(args.out + ".md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
