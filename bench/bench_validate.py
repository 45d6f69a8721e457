"""Benchmark: the curated_corpus GX checkpoint vs hand-written Pandas code computing the same checks.

Data: the t0 corpus in ../shared/data/corpus/t0_train_50k (55k JSONL prompt/completion rows, 283 templates),
shaped like the curated corpus (doc_id, source = template, licence, kind, text = prompt + completion, ...) and
exact-deduplicated on the normalized-text hash like the dedup stage. Suite thresholds are params.yaml's; the
allowed sources are the template names. Both sides run in this one process, median of 3 runs each.

GX import and file-context load are timed separately (they are paid once per process). The checkpoint time
includes what a pipeline run pays: validation plus the UpdateDataDocsAction (HTML) and the result store write.

    .venv/bin/python bench/bench_validate.py            # writes bench/results/validate.json
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
T0 = REPO.parent / "shared" / "data" / "corpus" / "t0_train_50k" / "data_per_template"
RUNS = 3


def load_t0():
    import pandas as pd

    from pipelines.data.text import normalize_text

    rows = []
    for f in sorted(T0.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            prompt = rec["prompt"].strip()
            response = rec["completion"].replace("<|endoftext|>", "").strip()
            text = f"{prompt}\n{response}"
            rows.append(dict(doc_id=hashlib.sha256(f"{f.stem}\n{text}".encode()).hexdigest(), source=f.stem,
                             licence="Apache-2.0", kind="instruction", text=text, prompt=prompt, response=response,
                             title=None, n_chars=len(text)))
    df = pd.DataFrame(rows)
    raw = len(df)
    df = df.loc[~df["text"].map(normalize_text).duplicated()].reset_index(drop=True)
    return df, raw


def hand_written(df, cfg, nd) -> dict:
    """The curated suite's checks in plain Pandas (same thresholds, same text statistics, dedup's near-duplicate
    definition `nd`)."""
    from pipelines.data.near_duplicates import near_duplicate_rate
    from pipelines.validation import textstats
    from pipelines.schema import CORPUS_COLUMNS, REQUIRED_NON_NULL

    lengths = df["text"].str.len()
    qs = sorted(cfg.length_quantiles)
    qv = df["n_chars"].quantile(qs).tolist()
    checks = {
        "columns": set(df.columns) == set(CORPUS_COLUMNS),
        "row_count": len(df) >= cfg.min_rows,
        **{f"not_null_{c}": int(df[c].isna().sum()) == 0 for c in REQUIRED_NON_NULL},
        "unique_doc_id": not df["doc_id"].duplicated(keep=False).any(),
        "unique_text": not df["text"].duplicated(keep=False).any(),
        "kind_in_set": bool(df["kind"].isin(cfg.kinds).all()),
        "source_in_set": bool(df["source"].isin(cfg.sources).all()),
        "n_chars_between": bool(df["n_chars"].between(cfg.min_chars, cfg.max_chars).all()),
        "text_length_between": bool(lengths.between(cfg.min_chars, cfg.max_chars).all()),
        "length_quantiles": all(lo <= v <= hi for v, (lo, hi) in zip(qv, (cfg.length_quantiles[q] for q in qs))),
        "near_duplicate_rate": near_duplicate_rate(df["text"].tolist(), nd) <= cfg.max_near_duplicate_rate,
        "pii_rate": textstats.pii_rate(df["text"].tolist()) <= cfg.max_pii_rate,
        "english_share": textstats.english_share(df["text"].tolist()) >= cfg.min_english_share,
    }
    return checks


def main() -> None:
    if not T0.exists():
        sys.exit(f"t0 corpus not found at {T0}")
    from pipelines.stages import validate
    from pipelines.stages.registry import shared_config, stage_config

    t = time.perf_counter()
    df, raw_rows = load_t0()
    load_s = time.perf_counter() - t
    cfg = stage_config("validate", REPO / "params.yaml", sources=sorted(df["source"].unique()))
    nd = shared_config("near_duplicate", REPO / "params.yaml")

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    t = time.perf_counter()
    from pipelines.validation import gx_project  # imports great_expectations + the custom expectations

    import_s = time.perf_counter() - t

    work = Path(tempfile.mkdtemp(prefix="bench_gx_"))
    gx_root = work / "gx"
    shutil.copytree(REPO / "great_expectations", gx_root, ignore=shutil.ignore_patterns("uncommitted"))
    t = time.perf_counter()
    context = gx_project.open_context(gx_root)
    context_s = time.perf_counter() - t
    batch = gx_project.dataframe_batch(context, asset=cfg.suite)
    checkpoint = gx_project.save_checkpoint(context, cfg.suite, lambda: validate.corpus_expectations(cfg, nd), batch)

    gx_times, hand_times = [], []
    outcome = checks = None
    for _ in range(RUNS):  # interleaved, so both sides see the same machine state
        t = time.perf_counter()
        outcome = gx_project.outcome(checkpoint.run(batch_parameters={"dataframe": df}))
        gx_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        checks = hand_written(df, cfg, nd)
        hand_times.append(time.perf_counter() - t)
    shutil.rmtree(work, ignore_errors=True)

    gx_med, hand_med = statistics.median(gx_times), statistics.median(hand_times)
    gx_verdicts = {(r["expectation"], r["column"]): r["success"] for r in outcome.results}
    result = {
        "dataset": "t0_train_50k (curated: exact-deduplicated on normalized text)",
        "rows_raw": raw_rows,
        "rows": int(len(df)),
        "runs": RUNS,
        "data_load_seconds": round(load_s, 2),
        "gx_import_seconds": round(import_s, 2),
        "gx_context_load_seconds": round(context_s, 2),
        "gx_checkpoint_seconds_median": round(gx_med, 2),
        "gx_checkpoint_seconds_all": [round(x, 2) for x in gx_times],
        "hand_written_pandas_seconds_median": round(hand_med, 2),
        "hand_written_pandas_seconds_all": [round(x, 2) for x in hand_times],
        "ratio_gx_over_hand": round(gx_med / hand_med, 3),
        "target_ratio": 1.5,
        "gx_expectations": len(gx_verdicts),
        "gx_failed": [str(f) for f in outcome.failures] + [f"(warning) {w}" for w in outcome.warnings],
        "hand_written_failed": sorted(k for k, ok in checks.items() if not ok),
    }
    out = REPO / "bench" / "results" / "validate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
