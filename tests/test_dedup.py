"""dedup on a tiny corpus: exact duplicates hidden behind whitespace, case and Unicode width noise."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.data.schema import CORPUS_COLUMNS
from pipelines.data.text import normalize_text
from pipelines.stages import dedup

SCHEMA = pa.schema([(c, pa.int32() if c == "n_chars" else pa.string()) for c in CORPUS_COLUMNS])
TEXTS = {
    "d1": "Hello   World",
    "a9": "hello world",  # smallest doc_id of its group: the survivor
    "c3": " HELLO\tworld\n",
    "b2": "ｈｅｌｌｏ world",  # full-width letters, folded by NFKC
    "e5": "Something else entirely.",
    "f6": "Another line.",
    "f7": "another   LINE.",
}


def _write_corpus(path, texts: dict[str, str]):
    rows = [
        {"doc_id": i, "source": "s", "licence": "MIT", "kind": "document", "text": t,
         "prompt": None, "response": None, "title": None, "n_chars": len(t)}
        for i, t in texts.items()
    ]
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path / "part-0.parquet")


def _config(tmp, name: str) -> dedup.Config:
    return dedup.Config(
        input_dir=str(tmp / "in"), output_dir=str(tmp / name / "corpus"),
        rejects_dir=str(tmp / name / "rejects"), metrics=str(tmp / name / "m.json"),
    )


@pytest.fixture(scope="module")
def result(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedup")
    _write_corpus(tmp / "in", TEXTS)
    cfg = _config(tmp, "one")
    report = dedup.run(cfg, spark=spark)
    out = ds.dataset(cfg.output_dir, format="parquet").to_table()
    rejects = ds.dataset(cfg.rejects_dir, format="parquet").to_table()
    return tmp, report, out, rejects


def test_normalize_text():
    assert normalize_text("  ＨＥＬＬＯ\t\n  World ") == "hello world"
    assert normalize_text(None) == ""


def test_survivors_and_rejects(result):
    _, report, out, rejects = result
    assert out["doc_id"].to_pylist() == ["a9", "e5", "f6"]
    assert out.schema == SCHEMA  # same schema out as in
    dropped = {r["doc_id"]: r["duplicate_of"] for r in rejects.to_pylist()}
    assert dropped == {"b2": "a9", "c3": "a9", "d1": "a9", "f7": "f6"}
    assert set(rejects["reason"].to_pylist()) == {"exact_duplicate"}
    assert set(rejects["stage"].to_pylist()) == {"dedup"}


def test_accounting(result):
    _, report, out, rejects = result
    assert (report["in"], report["out"], report["dropped"], report["duplicate_groups"]) == (7, 3, 4, 2)
    assert report["in"] == report["out"] + report["dropped"] and report["balanced"]
    assert report["dropped_by_reason"] == {"exact_duplicate": 4}
    assert (out.num_rows, rejects.num_rows) == (3, 4)


def test_rerun_is_identical(spark, result):
    tmp, report, out, rejects = result
    cfg = _config(tmp, "two")
    again = dedup.run(cfg, spark=spark)
    assert {k: v for k, v in again.items() if not k.endswith("_dir")} == \
        {k: v for k, v in report.items() if not k.endswith("_dir")}
    assert ds.dataset(cfg.output_dir, format="parquet").to_table().equals(out)
    assert ds.dataset(cfg.rejects_dir, format="parquet").to_table().equals(rejects)
