"""ingest on tiny sources made here: good records, every reject rule, an empty file, a broken JSON file."""
from __future__ import annotations

import hashlib
import json

import pyarrow.dataset as ds
import pytest
from pydantic import ValidationError

from pipelines.config import ConfigError, parse_section
from pipelines.data.schema import CORPUS_COLUMNS, REJECT_COLUMNS
from pipelines.stages import ingest

INSTRUCTIONS = [
    {"instruction": "Say hi.", "input": "", "response": "Hi!"},
    {"instruction": "  Add numbers.  ", "input": "2 and 3", "response": "5"},
    {"instruction": "No answer here.", "input": ""},  # missing response
    {"instruction": "Blank answer.", "input": "", "response": "   \n "},  # whitespace-only response
    {"instruction": "Count.", "input": 7, "response": "seven"},  # a number where a string was expected
]
LONG_GARBAGE = "{" + "x" * 5000


def _doc_lines() -> list[str]:
    good = json.dumps({"title": "Paris", "text": "Paris is the capital of France."})
    return [
        good,
        "",  # blank: skipped, not a record
        "{not json",
        "[1, 2]",  # JSON, but not an object
        json.dumps({"title": "No text"}),
        json.dumps({"text": "   "}),
        LONG_GARBAGE,
        good,  # verbatim repeat inside one source: kept here, dedup's job
        json.dumps({"text": "Berlin is in Germany."}),
    ]


def _sources(raw) -> list[dict]:
    return [
        {"name": "instr", "path": str(raw / "instr.json"), "format": "json", "kind": "instruction",
         "licence": "MIT", "fields": {"prompt": ["instruction", "input"], "response": "response"}},
        {"name": "docs", "path": str(raw / "docs.jsonl"), "format": "jsonl", "kind": "document",
         "licence": "CC-BY-SA-4.0", "fields": {"text": "text", "title": "title"}},
        {"name": "empty", "path": str(raw / "empty.jsonl"), "format": "jsonl", "kind": "document",
         "licence": "CC0-1.0", "fields": {"text": "text"}},
        {"name": "broken", "path": str(raw / "broken.json"), "format": "json", "kind": "instruction",
         "licence": "MIT", "fields": {"prompt": "instruction", "response": "response"}},
    ]


def _config(raw, out) -> ingest.Config:
    return ingest.Config(
        sources=_sources(raw), input_dir=str(raw), output_dir=str(out / "ingested"),
        rejects_dir=str(out / "rejects"), metrics=str(out / "metrics.json"),
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    (raw / "instr.json").write_text(json.dumps(INSTRUCTIONS, indent=1))
    (raw / "docs.jsonl").write_text("\n".join(_doc_lines()) + "\n")
    (raw / "empty.jsonl").write_text("")
    (raw / "broken.json").write_text('[{"instruction": "a", "response": ')
    return raw


@pytest.fixture(scope="module")
def result(spark, raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg = _config(raw, out)
    report = ingest.run(cfg, spark=spark)
    table = ds.dataset(cfg.output_dir, format="parquet").to_table()
    rejects = ds.dataset(cfg.rejects_dir, format="parquet").to_table()
    return cfg, report, table, rejects


def test_fixed_schema_and_good_rows(result):
    _, report, table, _ = result
    assert tuple(table.column_names) == CORPUS_COLUMNS
    assert str(table.schema.field("n_chars").type) == "int32"
    rows = {r["prompt"] or r["text"]: r for r in table.to_pylist()}
    hi = rows["Say hi."]  # the empty `input` is skipped, not joined as a blank paragraph
    assert hi["text"] == "Say hi.\n\nHi!" and hi["response"] == "Hi!" and hi["licence"] == "MIT"
    assert rows["Add numbers.\n\n2 and 3"]["text"] == "Add numbers.\n\n2 and 3\n\n5"
    assert "Count.\n\n7" in rows
    paris = rows["Paris is the capital of France."]
    assert paris["kind"] == "document" and paris["title"] == "Paris" and paris["prompt"] is None
    assert all(r["n_chars"] == len(r["text"]) for r in table.to_pylist())
    assert table["doc_id"].to_pylist() == sorted(table["doc_id"].to_pylist())


def test_rejects_carry_reasons(result):
    cfg, report, _, rejects = result
    assert tuple(rejects.column_names) == REJECT_COLUMNS
    rows = rejects.to_pylist()
    docs = {r["line"]: r["reason"] for r in rows if r["source"] == "docs"}
    assert docs == {3: "malformed_json", 4: "malformed_json", 5: "missing_field", 6: "empty_text", 7: "malformed_json"}
    instr = sorted(r["reason"] for r in rows if r["source"] == "instr")
    assert instr == ["empty_text", "missing_field"]
    assert all(r["stage"] == "ingest" and r["rule"] for r in rows)
    assert max(len(r["raw"]) for r in rows) == 2000  # the long garbage line is truncated
    assert report["sources"]["docs"]["blank_lines_skipped"] == 1


def test_broken_json_file_is_one_reject(result):
    _, report, _, rejects = result
    broken = [r for r in rejects.to_pylist() if r["source"] == "broken"]
    assert len(broken) == 1 and broken[0]["reason"] == "malformed_json" and broken[0]["line"] is None
    rep = report["sources"]["broken"]
    assert (rep["in"], rep["out"], rep["rejected_by_reason"]) == (1, 0, {"malformed_json": 1})


def test_empty_source_is_accounted(result):
    _, report, _, _ = result
    empty = report["sources"]["empty"]
    assert (empty["in"], empty["out"], empty["rejected"], empty["empty"]) == (0, 0, 0, True)
    assert any("'empty'" in note for note in report["notes"])


def test_accounting_holds_everywhere(result):
    cfg, report, table, rejects = result
    for name, rep in report["sources"].items():
        assert rep["in"] == rep["out"] + rep["rejected"], name
        assert rep["rejected"] == sum(rep["rejected_by_reason"].values())
    total = report["total"]
    assert (total["in"], total["out"], total["rejected"]) == (5 + 8 + 0 + 1, table.num_rows, rejects.num_rows)
    assert total["in"] == total["out"] + total["rejected"] and total["balanced"]
    assert total["rejected_by_reason"] == {"empty_text": 2, "malformed_json": 4, "missing_field": 2}
    assert json.loads(open(cfg.metrics).read())["total"] == total


def test_doc_ids_are_content_hashes_and_unique(result):
    _, _, table, _ = result
    ids = table["doc_id"].to_pylist()
    assert len(set(ids)) == len(ids)  # the verbatim repeat got its own id
    row = next(r for r in table.to_pylist() if r["text"] == "Berlin is in Germany.")
    canonical = "\x1f".join(["docs", "document", "", "", "", "Berlin is in Germany."])
    assert row["doc_id"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_rerun_is_identical(spark, raw, result, tmp_path):
    _, report, table, rejects = result
    cfg = _config(raw, tmp_path)
    again = ingest.run(cfg, spark=spark)
    assert again["total"] == report["total"]
    assert ds.dataset(cfg.output_dir, format="parquet").to_table().equals(table)
    assert ds.dataset(cfg.rejects_dir, format="parquet").to_table().equals(rejects)
    assert not list(tmp_path.glob(".*tmp-*"))  # atomic writes leave no temp directories behind


def test_source_without_licence_is_refused(raw):
    sources = _sources(raw)
    del sources[0]["licence"]
    with pytest.raises(ValidationError, match="source 'instr' declares no licence"):
        ingest.Config(sources=sources)
    sources[0]["licence"] = "  "
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.licence.*declares no licence"):
        parse_section({"ingest": {"sources": sources}}, "ingest", ingest.Config)


def test_config_checks_fields_and_names(raw):
    sources = _sources(raw)
    sources[1]["fields"] = {"title": "title"}
    with pytest.raises(ValidationError, match="must map fields: text"):
        ingest.Config(sources=sources)
    with pytest.raises(ValidationError, match="unique"):
        ingest.Config(sources=[_sources(raw)[0]] * 2)


def test_missing_file_fails_before_spark(raw, tmp_path):
    sources = _sources(raw)
    sources[0]["path"] = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="'instr'"):
        ingest.run(ingest.Config(sources=sources), spark=object())
