"""ingest on tiny sources made here: good records, every reject rule, an empty file, a broken JSON file."""
from __future__ import annotations

import hashlib
import json

import pyarrow.dataset as ds
import pytest

from pipelines.config import ConfigError, load_params
from pipelines.data import ingest_accounting
from pipelines.data.clean import rules_off
from pipelines.errors import StageFailed
from pipelines.schema import CORPUS_COLUMNS, REJECT_COLUMNS
from pipelines.stages import ingest
from pipelines.stages.registry import stage_config

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
         "licence": "MIT", "pii": "redact", "fields": {"prompt": ["instruction", "input"], "response": "response"}},
        {"name": "docs", "path": str(raw / "docs.jsonl"), "format": "jsonl", "kind": "document",
         "licence": "CC-BY-SA-4.0", "pii": "redact", "fields": {"text": "text", "title": "title"}},
        {"name": "empty", "path": str(raw / "empty.jsonl"), "format": "jsonl", "kind": "document",
         "licence": "CC0-1.0", "pii": "keep", "fields": {"text": "text"}},
        {"name": "broken", "path": str(raw / "broken.json"), "format": "json", "kind": "instruction",
         "licence": "MIT", "pii": "drop", "fields": {"prompt": "instruction", "response": "response"}},
    ]


# The parse checks and the accounting are tested with every quality rule and the language filter off, so that
# each reject below comes from parsing; the format tests further down switch a few rules on.
NO_LANGUAGE_FILTER = {"allowed": [], "min_confidence": 0.0, "min_chars": 0}


def _ingest_config(quality: dict | None = None, language: dict | None = None, **overrides) -> ingest.Config:
    """params.yaml's ingest section with only the `quality` rules given switched on (the section's rules are
    replaced whole: a merge could not switch an n-gram rule off, mappings merge key by key)."""
    params = load_params()
    params["ingest"]["quality"] = {**rules_off(), **(quality or {})}
    return stage_config("ingest", params, language=language or NO_LANGUAGE_FILTER, **overrides)


def _config(raw, out) -> ingest.Config:
    return _ingest_config(sources=_sources(raw), input_dir=str(raw), output_dir=str(out / "ingested"),
                          rejects_dir=str(out / "rejects"), metrics=str(out / "metrics.json"))


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
    with pytest.raises(ConfigError, match="source 'instr' declares no licence"):
        stage_config("ingest", sources=sources)
    sources[0]["licence"] = "  "
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.licence.*declares no licence"):
        stage_config("ingest", sources=sources)


def test_config_checks_fields_and_names(raw):
    sources = _sources(raw)
    sources[1]["fields"] = {"title": "title"}
    with pytest.raises(ConfigError, match="must map fields: text"):
        stage_config("ingest", sources=sources)
    with pytest.raises(ConfigError, match="unique"):
        stage_config("ingest", sources=[_sources(raw)[0]] * 2)


def test_missing_file_fails_before_spark(raw, tmp_path):
    sources = _sources(raw)
    sources[0]["path"] = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="'instr'"):
        ingest.run(stage_config("ingest", sources=sources), spark=object())


def test_unbalanced_written_counts_fail_and_leave_nothing(spark, raw, tmp_path, monkeypatch):
    """A write that lost a row: the check on the written tables raises inside the atomic write, so neither the
    corpus nor the rejects table (nor the metrics) replaces what was there."""
    real = ingest_accounting.count_written

    def lost_one_row(*args):
        written = real(*args)
        out = dict(written.out)
        out[("instr",)] -= 1
        return ingest_accounting.WrittenCounts(out, written.rejected_by_reason, written.duplicate_doc_ids)

    monkeypatch.setattr(ingest, "count_written", lost_one_row)
    cfg = _config(raw, tmp_path)
    (tmp_path / "ingested").mkdir()
    (tmp_path / "ingested" / "previous.parquet").write_text("the last good run")
    with pytest.raises(StageFailed, match=r"in != out \+ rejected for \['instr'\], 0 duplicated doc_id"):
        ingest.run(cfg, spark=spark)
    assert [p.name for p in tmp_path.iterdir()] == ["ingested"]  # no rejects, no metrics, no temp directory
    assert [p.name for p in (tmp_path / "ingested").iterdir()] == ["previous.parquet"]


# --- every format and the bad inputs of the issue, in one run ------------------------------------------------

PII_DOC = ("Contact our office by mail at jane.doe@example.org or pay with card 4111 1111 1111 1111 before "
           "the end of the month, then the team will ship the order to your home address.")
GOOD_DOC = "The river flows through the old town and past the market square where people meet every morning."
CLEAN_RULES = {  # the other quality rules off
    "language": {"allowed": ["en"], "min_confidence": 0.5, "min_chars": 20},
    "quality": {"max_chars": 100_000, "min_words": 5, "max_duplicate_ngram_char_fraction": {5: 0.15},
                "bad_phrases": ["lorem ipsum"]},
}


def _bad_jsonl_lines() -> list[bytes]:
    def j(rec):
        return json.dumps(rec).encode()

    binary = bytes(b for b in range(256) if b not in (10, 13)) * 2
    return [
        j({"id": "pii", "text": PII_DOC}),
        b'{"id": "latin1", "text": "caf\xe9 au lait is a drink that many people enjoy in the morning"}',
        binary,
        j({"id": "null", "text": None}),
        j({"id": "blank", "text": "   "}),
        j({"id": "dup", "text": GOOD_DOC}),
        j({"id": "dup", "text": "A second record that reuses the id of an earlier one in this file."}),
        j({"id": "de", "text": "Der Fluss fließt durch die Altstadt und am Marktplatz vorbei, wo sich morgens "
                               "alle treffen."}),
        j({"id": "rep", "text": "buy cheap shoes now " * 40}),
        j({"id": "big", "text": "word " * 2_100_000}),  # a 10 MB single document
        j({"id": "lorem", "text": "Welcome to our site, this page is lorem ipsum dolor sit amet placeholder text."}),
        j({"id": "ctrl", "text": "Tabs\tand\u0000 control\u0007 characters are removed from this little text here."}),
    ]


@pytest.fixture(scope="module")
def formats_raw(tmp_path_factory):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path_factory.mktemp("formats")
    with gzip.open(raw / "docs.jsonl.gz", "wb") as fh:
        fh.write(b"\n".join(_bad_jsonl_lines()) + b"\n")
    (raw / "pairs.csv").write_text(
        "prompt,completion\n"
        '"What is the capital of France, in one word?",Paris is the capital of France.\n'
        '"Write two lines\nabout the sea.","The sea is wide and deep, and the waves roll in."\n'
        "My SSN is 123-45-6789 so can you store it safely?,No I should not store that number anywhere.\n"
        "only,two,extra,fields\n"
    )
    (raw / "missing.csv").write_text("prompt,other\nhello there my good friend,x\n")
    pq.write_table(pa.table({"body": [f"{GOOD_DOC} Write to bob@example.com.", None], "n": [1, 2]}),
                   raw / "table.parquet")
    texts = raw / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text(GOOD_DOC)
    (texts / "sub" / "b.txt").write_text("A plain text file in a sub folder becomes one more document here.")
    (texts / "bin.dat").write_bytes(bytes(range(256)) * 8)
    (texts / "empty.txt").write_text("")  # an empty file holds no record (Spark lists no row), like an empty JSONL
    (texts / "blank.txt").write_text("  \n\n  ")
    return raw


def _format_sources(raw) -> list[dict]:
    return [
        {"name": "gz", "path": str(raw / "docs.jsonl.gz"), "format": "jsonl", "kind": "document",
         "licence": "CC0-1.0", "pii": "redact", "fields": {"text": "text", "id": "id"}},
        {"name": "csv", "path": str(raw / "pairs.csv"), "format": "csv", "kind": "instruction",
         "licence": "MIT", "pii": "drop", "fields": {"prompt": "prompt", "response": "completion"}},
        {"name": "csv_missing", "path": str(raw / "missing.csv"), "format": "csv", "kind": "instruction",
         "licence": "MIT", "pii": "drop", "fields": {"prompt": "prompt", "response": "completion"}},
        {"name": "pq", "path": str(raw / "table.parquet"), "format": "parquet", "kind": "document",
         "licence": "MIT", "pii": "keep", "fields": {"text": "body"}},
        {"name": "txt", "path": str(raw / "texts"), "format": "text", "kind": "document",
         "licence": "CC0-1.0", "pii": "redact", "fields": {"text": "text", "title": "file"}},
    ]


@pytest.fixture(scope="module")
def formats_result(spark, formats_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats_out")
    cfg = _ingest_config(sources=_format_sources(formats_raw), output_dir=str(out / "ingested"),
                         rejects_dir=str(out / "rejects"), metrics=str(out / "metrics.json"), **CLEAN_RULES)
    report = ingest.run(cfg, spark=spark)
    table = ds.dataset(cfg.output_dir, format="parquet").to_table().to_pylist()
    rejects = ds.dataset(cfg.rejects_dir, format="parquet").to_table().to_pylist()
    return report, table, rejects


def _reasons(rejects, source):
    return {(r["line"], r["reason"], r["rule"].split(":")[0]) for r in rejects if r["source"] == source}


def test_bad_jsonl_inputs_are_all_accounted(formats_result):
    report, table, rejects = formats_result
    assert _reasons(rejects, "gz") == {
        (2, "invalid_utf8", "bytes that are not valid UTF-8"),
        (3, "binary_content", "NUL bytes or over 10% control/undecodable characters"),
        (4, "missing_field", "text field 'text' absent or null"),
        (5, "empty_text", "text is empty or whitespace only"),
        (7, "duplicate_id", "source id repeated (first occurrence kept)"),
        (8, "language", "allowed_languages"),
        (9, "quality", "max_duplicate_5gram_char_fraction"),
        (10, "quality", "max_chars"),
        (11, "quality", "bad_phrases"),
    }
    gz = report["sources"]["gz"]
    assert (gz["in"], gz["out"], gz["rejected"]) == (12, 3, 9)
    assert gz["rejected_by_rule"]["quality"] == {"bad_phrases": 1, "max_chars": 1,
                                                  "max_duplicate_5gram_char_fraction": 1}
    big = next(r for r in rejects if r["line"] == 10)
    assert len(big["raw"]) == 2000 and big["path"].endswith("docs.jsonl.gz")
    texts = sorted(r["text"] for r in table if r["source"] == "gz")
    assert texts[0].startswith("Contact our office by mail at <EMAIL> or pay with card <CREDIT_CARD> before")
    assert any("Tabs\tand control characters are removed" in t for t in texts)  # NUL and BEL stripped, tab kept
    assert gz["pii"]["redacted"] == {"CREDIT_CARD": 1, "EMAIL": 1} and gz["pii"]["docs_with_pii"] == 1
    assert gz["languages"] == {"en": 3} and gz["normalized_changed"] == 1


def test_csv_parquet_and_text_folders(formats_result):
    report, table, rejects = formats_result
    src = report["sources"]
    csv_rows = {r["prompt"]: r for r in table if r["source"] == "csv"}
    assert set(csv_rows) == {"What is the capital of France, in one word?", "Write two lines\nabout the sea."}
    assert {(r["reason"], r["rule"].split(":")[0]) for r in rejects if r["source"] == "csv"} == {
        ("pii", "US_SSN"), ("malformed_csv", "not a valid CSV row with the header's columns")}
    assert src["csv"]["pii"]["spans_found"] == {"US_SSN": 1} and src["csv"]["pii"]["redacted"] == {}
    # A column the CSV lacks: every row rejected, and a note says why.
    assert src["csv_missing"]["rejected_by_reason"] == {"missing_field": 1}
    assert any("completion missing from the CSV header" in n for n in report["notes"])
    # pii: keep leaves the text as it is, but counts what it saw.
    (pq_row,) = [r for r in table if r["source"] == "pq"]
    assert "bob@example.com" in pq_row["text"] and src["pq"]["pii"]["spans_found"] == {"EMAIL": 1}
    assert src["pq"]["rejected_by_reason"] == {"missing_field": 1}
    txt = {r["title"]: r["text"] for r in table if r["source"] == "txt"}
    assert set(txt) == {"a.txt", "sub/b.txt"} and txt["a.txt"] == GOOD_DOC
    assert src["txt"]["rejected_by_reason"] == {"binary_content": 1, "empty_text": 1}
    assert {r["path"].rsplit("/", 1)[-1] for r in rejects if r["source"] == "txt"} == {"bin.dat", "blank.txt"}


def test_formats_accounting(formats_result):
    report, table, rejects = formats_result
    for name, rep in report["sources"].items():
        assert rep["balanced"] and rep["in"] == rep["out"] + rep["rejected"], name
        assert rep["rejected"] == sum(sum(rules.values()) for rules in rep["rejected_by_rule"].values()), name
    total = report["total"]
    assert (total["out"], total["rejected"]) == (len(table), len(rejects)) and total["balanced"]
    assert total["pii_redacted"] == {"CREDIT_CARD": 1, "EMAIL": 1}
    assert len({r["doc_id"] for r in table}) == len(table)


def test_source_without_pii_policy_is_refused(raw):
    sources = _sources(raw)
    del sources[1]["pii"]
    with pytest.raises(ConfigError, match="source 'docs' declares no PII policy"):
        stage_config("ingest", sources=sources)
    sources[1]["pii"] = "mask"
    with pytest.raises(ConfigError, match="pii must be one of redact, drop, keep"):
        stage_config("ingest", sources=sources)
    sources[1]["pii"] = "keep"
    sources[1]["skip_rules"] = ["min_wordz"]
    with pytest.raises(ConfigError, match="unknown rule"):
        stage_config("ingest", sources=sources)


# --- s3:// sources against moto_server ----------------------------------------------------------------------


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server["region_name"])


def test_s3_sources(spark, s3_bucket, s3_env, tmp_path):
    bucket, client = s3_bucket
    doc = lambda t: json.dumps({"text": t}) + "\n"  # noqa: E731
    client.put_object(Bucket=bucket, Key="raw/one.jsonl", Body=doc(GOOD_DOC) + "{broken\n")
    client.put_object(Bucket=bucket, Key="raw/many/a.jsonl", Body=doc("First file in the prefix has this text."))
    client.put_object(Bucket=bucket, Key="raw/many/b.jsonl", Body=doc("Second file in the prefix has this text."))
    sources = [
        {"name": "one", "path": f"s3://{bucket}/raw/one.jsonl", "format": "jsonl", "kind": "document",
         "licence": "CC0-1.0", "pii": "redact", "fields": {"text": "text"}},
        {"name": "many", "path": f"s3://{bucket}/raw/many", "format": "jsonl", "kind": "document",
         "licence": "CC0-1.0", "pii": "redact", "fields": {"text": "text"}},
    ]
    cfg = _ingest_config(sources=sources, output_dir=str(tmp_path / "out"), rejects_dir=str(tmp_path / "rej"),
                         metrics=str(tmp_path / "m.json"), staging_dir=str(tmp_path / "staging"))
    report = ingest.run(cfg, spark=spark)
    assert (report["sources"]["one"]["out"], report["sources"]["many"]["out"]) == (1, 2)
    (rej,) = ds.dataset(cfg.rejects_dir, format="parquet").to_table().to_pylist()
    assert (rej["path"], rej["line"], rej["reason"]) == (f"s3://{bucket}/raw/one.jsonl", 2, "malformed_json")
    assert not list((tmp_path / "staging").glob(".*tmp-*"))

    missing = [dict(sources[0], path=f"s3://{bucket}-nope/raw/one.jsonl")]
    with pytest.raises(FileNotFoundError, match=r"ingest source 'one': bucket '.*-nope' .* not found"):
        ingest.run(stage_config("ingest", sources=missing), spark=object())
    missing = [dict(sources[0], path=f"s3://{bucket}/raw/nothing-here")]
    with pytest.raises(FileNotFoundError, match="no object at"):
        ingest.run(stage_config("ingest", sources=missing), spark=object())


def test_ner_on_spark_corpus_pass_gives_the_same_tables_and_runs_each_sentence_once(spark, tmp_path):
    """Names, places and organisations redacted on Spark, with the corpus pass (each distinct sentence of the
    corpus through the model once, looked up by the cleaning UDF) and without it (per-worker cache only): the same
    tables and counts. A passage repeated across records and sources gives one model input per sentence; a source
    whose policy keeps the NER types is left out of the pass."""
    from pipelines.data import clean_spark, pii
    from pipelines.data.clean import Normalize

    passage = "Maria Lopez moved from Madrid to Chicago in 2019. She joined Initech Corporation there."
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"q": f"Read this: {passage}\nWho moved?", "a": "Maria Lopez."},
        {"q": f"Passage:\n{passage}\nWhere to?", "a": "Chicago."},
        {"q": "Ignore this one.", "a": "Fine."},
    ]) + "\n")
    (raw / "docs.jsonl").write_text(json.dumps({"text": passage}) + "\n")
    (raw / "kept.jsonl").write_text(json.dumps({"text": "John Smith lives in Paris."}) + "\n")
    sources = [
        {"name": "qa", "path": str(raw / "qa.jsonl"), "format": "jsonl", "kind": "instruction", "licence": "MIT",
         "pii": "redact", "fields": {"prompt": "q", "response": "a"}},
        {"name": "docs", "path": str(raw / "docs.jsonl"), "format": "jsonl", "kind": "document", "licence": "MIT",
         "pii": "redact", "fields": {"text": "text"}},
        {"name": "kept", "path": str(raw / "kept.jsonl"), "format": "jsonl", "kind": "document", "licence": "MIT",
         "pii": {"default": "keep", "EMAIL": "redact"}, "fields": {"text": "text"}},
    ]
    entities = list(load_params()["ingest"]["pii_entities"]) + list(pii.NER_ENTITIES)
    tables, reports = {}, {}
    # broadcast (the default size limit), a Spark join (a limit below the corpus's distinct sentences), no pass
    for mode, corpus_pass, limit in (("broadcast", True, None), ("join", True, 5), ("none", False, None)):
        out = tmp_path / f"out_{mode}"
        ner = {**load_params()["ingest"]["pii_ner"], "corpus_pass": corpus_pass}
        if limit is not None:
            ner["broadcast_max_segments"] = limit
        cfg = _ingest_config(sources=sources, input_dir=str(raw), output_dir=str(out / "ingested"),
                             rejects_dir=str(out / "rejects"), metrics=str(out / "metrics.json"),
                             pii_entities=entities, pii_ner=ner)
        reports[mode] = ingest.run(cfg, spark=spark)
        tables[mode] = ds.dataset(cfg.output_dir, format="parquet").to_table().sort_by("doc_id")
    assert reports["broadcast"]["ner_corpus_pass"] == {"mode": "broadcast", "distinct_sentences": 10}
    assert reports["join"]["ner_corpus_pass"] == {"mode": "join", "distinct_sentences": 10}  # 10 > 5: switched
    assert reports["none"]["ner_corpus_pass"] is None
    for mode in ("join", "none"):
        assert tables[mode].equals(tables["broadcast"]), mode
        assert reports[mode]["total"] == reports["broadcast"]["total"] and reports[mode]["sources"] == reports[
            "broadcast"]["sources"], mode
    tables[True] = tables["broadcast"]
    reports[True] = reports["broadcast"]
    texts = dict(zip(tables[True].column("source").to_pylist(), tables[True].column("text").to_pylist()))
    assert "Maria Lopez" not in texts["docs"] and "<PERSON>" in texts["docs"] and "<LOCATION>" in texts["docs"]
    assert texts["kept"] == "John Smith lives in Paris."
    assert reports[True]["sources"]["docs"]["pii"]["redacted"]["PERSON"] >= 1

    cfg = _ingest_config(sources=sources, pii_entities=entities)
    parsed = spark.createDataFrame(
        [("qa", "a", 1, None, f"Read this: {passage}", "Maria Lopez.", None, None),
         ("docs", "b", 1, None, None, None, passage, None), ("docs", "b", 2, "parse", None, None, "Never scanned.", None),
         ("kept", "c", 1, None, None, None, "John Smith lives in Paris.", None)],
        "source string, _file string, _pos long, _reason string, prompt string, response string, text string, "
        "title string")
    ner_opts = cfg.pii_ner.model_dump(exclude={"corpus_pass", "broadcast_max_segments"})
    table = clean_spark.precompute_ner(spark, parsed, cfg.sources, normalize=Normalize(**cfg.normalize.model_dump()),
                                       pii_entities=entities, pii_ner=ner_opts)
    try:
        assert table.mode == "broadcast" and table.segments == 4
        (segments,) = table.broadcast.value.values()  # one detector entity list: one table
        # "Read this: Maria ... 2019. ", "She joined ... there.", "Maria Lopez moved ... 2019. ", "Maria Lopez."
        assert len(segments) == 4
        assert all(len(d) == 16 for d in segments) and any(segments.values())
        joined = clean_spark.precompute_ner(spark, parsed, cfg.sources, normalize=Normalize(**cfg.normalize.model_dump()),
                                            pii_entities=entities, pii_ner=ner_opts, broadcast_max_segments=3)
        try:  # the join gives each record its own sentences' results: together, the broadcast table
            assert joined.mode == "join" and joined.segments == 4 and joined.broadcast is None
            rows = {(r.source, r._file, r._pos): r._ner for r in joined.per_record.collect()}
            assert set(rows) == {("qa", "a", 1), ("docs", "b", 1)}  # rejected and kept-policy records: none
            assert len(rows[("qa", "a", 1)]) == 3 and len(rows[("docs", "b", 1)]) == 2  # the passage: shared
            assert clean_spark._batch_tables(list(rows.values()) + [None], joined.keys) == table.broadcast.value
        finally:
            joined.destroy()
    finally:
        table.destroy()
