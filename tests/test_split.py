"""split: seeded, per-row stable assignment; exact accounting; one file per split."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import ConfigError
from pipelines.schema import CORPUS_COLUMNS
from pipelines.stages import split
from pipelines.stages.registry import stage_config

SCHEMA = pa.schema([(c, pa.int32() if c == "n_chars" else pa.string()) for c in CORPUS_COLUMNS])


def _corpus(path, n: int, start: int = 0):
    """A Spark-like output directory: part files plus _SUCCESS and .crc files that readers must skip."""
    rows = [
        {"doc_id": f"{i:06d}", "source": "s", "licence": "MIT", "kind": "instruction" if i % 3 else "document",
         "text": f"text {i}", "prompt": None, "response": None, "title": None, "n_chars": 6}
        for i in range(start, start + n)
    ]
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path / f"part-{start:05d}.parquet")
    (path / "_SUCCESS").write_text("")
    (path / f".part-{start:05d}.parquet.crc").write_bytes(b"crc")


def _run(tmp, name: str, **kw) -> tuple[split.Report, dict[str, list[str]]]:
    cfg = stage_config("split", input_dir=str(tmp / "in"), output_dir=str(tmp / name),
                       metrics=str(tmp / f"{name}.json"), **kw)
    report = split.run(cfg)
    ids = {s: pq.read_table(tmp / name / f"{s}.parquet")["doc_id"].to_pylist() for s in split.SPLITS}
    return report, ids


def test_fractions_accounting_and_files(tmp_path):
    _corpus(tmp_path / "in", 3000)
    report, ids = _run(tmp_path, "out", eval_fraction=0.1, test_fraction=0.2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.parquet", "test.parquet", "train.parquet"]
    assert report["in"] == 3000 == sum(report["splits"].values()) == sum(len(v) for v in ids.values())
    assert report["fractions"]["eval"] == pytest.approx(0.1, abs=0.02)
    assert report["fractions"]["test"] == pytest.approx(0.2, abs=0.02)
    assert sum(sum(k.values()) for k in report["by_kind"].values()) == 3000
    assert report["by_kind"]["document"]["train"] + report["by_kind"]["instruction"]["train"] == len(ids["train"])
    assert not set(ids["train"]) & (set(ids["eval"]) | set(ids["test"]))
    assert pq.read_table(tmp_path / "out" / "train.parquet").schema == SCHEMA


def test_deterministic_and_stable_when_rows_are_added(tmp_path):
    _corpus(tmp_path / "in", 500)
    _, first = _run(tmp_path, "a")
    _, again = _run(tmp_path, "b")
    assert first == again
    _corpus(tmp_path / "in", 500, start=500)  # new data arrives
    _, grown = _run(tmp_path, "c")
    for name in split.SPLITS:  # no old row changed split
        assert [d for d in grown[name] if d < "000500"] == first[name]
    _, reseeded = _run(tmp_path, "d", seed=7)
    assert reseeded != grown


def test_bad_fractions_are_refused():
    with pytest.raises(ConfigError, match="below 1"):
        stage_config("split", eval_fraction=0.5, test_fraction=0.5)


def test_missing_input_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="run dedup first"):
        split.run(stage_config("split", input_dir=str(tmp_path / "none"), output_dir=str(tmp_path / "o"),
                               metrics=str(tmp_path / "m.json")))
