"""split: assign each curated row to train / eval / test by a seeded hash of its doc_id.

A row's split depends only on (seed, doc_id), never on the other rows, so adding data later never moves an
existing row between train and test. The curated corpus is small, so this runs on pyarrow (which also reads a
Spark-written Parquet directory) and writes one file per split.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypedDict

from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import atomic_dir, write_json
from pipelines.schema import CORPUS_COLUMNS

SECTION = "split"
SPLITS = ("train", "eval", "test")


class Config(StageConfig):
    input_dir: str
    output_dir: str  # train.parquet, eval.parquet, test.parquet
    seed: int
    eval_fraction: float = Field(ge=0.0, lt=1.0)
    test_fraction: float = Field(ge=0.0, lt=1.0)
    metrics: str

    @model_validator(mode="after")
    def _leaves_train(self) -> "Config":
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ValueError("eval_fraction + test_fraction must be below 1 so that train is not empty")
        return self


# metrics/split.json. Functional syntax: `in` is a Python keyword.
Report = TypedDict("Report", {
    "stage": str,
    "in": int,  # curated rows read
    "splits": dict[str, int],  # rows per split
    "fractions": dict[str, float],
    "by_kind": dict[str, dict[str, int]],  # kind -> split -> rows
    "seed": int,
    "balanced": bool,
    "output_dir": str,
})


def bucket(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, doc_id)."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(seed: int, doc_id: str, eval_fraction: float, test_fraction: float) -> str:
    u = bucket(seed, doc_id)
    if u < eval_fraction:
        return "eval"
    if u < eval_fraction + test_fraction:
        return "test"
    return "train"


def _read_corpus(path: str):
    """The corpus as an Arrow table with its exact column types (pipelines.schema.read_corpus goes through pandas,
    which would turn an all-null int column into float)."""
    import pyarrow.dataset as ds

    if not Path(path).exists():
        raise FileNotFoundError(f"split: input {path} does not exist; run dedup first")
    # pyarrow.dataset skips Spark's _SUCCESS and .crc files (names starting with _ or .).
    table = ds.dataset(path, format="parquet").to_table()
    missing = [c for c in CORPUS_COLUMNS if c not in table.column_names]
    if missing:
        raise StageFailed(f"split: {path} lacks corpus column(s) {', '.join(missing)}")
    return table.select(list(CORPUS_COLUMNS))


def _value_counts(column) -> dict[str, int]:
    import pyarrow.compute as pc

    vc = pc.value_counts(column)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def run(cfg: Config) -> Report:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = _read_corpus(cfg.input_dir)
    table = table.sort_by("doc_id")  # same rows -> same files, whatever order the input parts came in
    labels = pa.array(
        [assign(cfg.seed, d, cfg.eval_fraction, cfg.test_fraction) for d in table["doc_id"].to_pylist()]
    )

    counts: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    with atomic_dir(cfg.output_dir) as tmp:
        for name in SPLITS:
            part = table.filter(pc.equal(labels, name))
            pq.write_table(part, tmp / f"{name}.parquet")
            counts[name] = part.num_rows
            for kind, n in _value_counts(part["kind"]).items():
                by_kind.setdefault(kind, {s: 0 for s in SPLITS})[name] = n
    n_in = table.num_rows
    if n_in != sum(counts.values()):
        raise StageFailed(f"split accounting failed: in={n_in} != sum of splits {counts}")

    report: Report = {
        "stage": "split",
        "in": n_in,
        "splits": counts,
        "fractions": {s: round(n / n_in, 4) if n_in else 0.0 for s, n in counts.items()},
        "by_kind": dict(sorted(by_kind.items())),
        "seed": cfg.seed,
        "balanced": True,
        "output_dir": cfg.output_dir,
    }
    write_json(cfg.metrics, report)
    return report
