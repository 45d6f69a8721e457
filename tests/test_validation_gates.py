"""Data contracts for every dataset the pipeline produces (raw, curated, splits, embeddings) and the custom text
expectations behind them, on the real GX 1.x file context. Each blocking expectation is seen failing at least once
(one deliberately broken dataset per suite breaks all of them at once, to keep this file fast), and each suite
passes on a corpus built from the shipped sample."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data import near_duplicates
from pipelines.errors import StageFailed
from pipelines.schema import corpus_schema
from pipelines.stages import validate, validate_embeddings, validate_raw, validate_splits
from pipelines.stages.registry import shared_config, stage_config
from pipelines.validation import textstats
from pipelines.validation.context import GxConfig
from tests.test_validate import tiny_corpus, write_spark_like

GERMAN = "Der schnelle braune Fuchs springt über den faulen Hund, während die Katze schläft und träumt."


@pytest.fixture()
def gx_root(tmp_path, repo_root) -> Path:
    root = tmp_path / "gx"
    shutil.copytree(repo_root / "great_expectations", root, ignore=shutil.ignore_patterns("uncommitted"))
    return root


@pytest.fixture()
def gx(gx_root) -> GxConfig:
    """The params.yaml `gx` section pointed at the temporary copy of the context."""
    return shared_config("gx", context_root=str(gx_root))


def cfg_for(module, tmp_path: Path, **overrides):
    """The stage's params.yaml section with results and metrics under tmp_path, plus `overrides`."""
    return stage_config(module.SECTION, results_dir=str(tmp_path / "results"),
                        metrics=str(tmp_path / "metrics.json"), **overrides)


def assert_committed_in_sync(gx_root: Path, repo_root: Path, suite: str) -> None:
    for rel in (f"expectations/{suite}.json", f"validation_definitions/{suite}.json", f"checkpoints/{suite}.json"):
        committed = repo_root / "great_expectations" / rel
        assert committed.exists(), f"{rel} not committed"
        assert (gx_root / rel).read_text() == committed.read_text(), (
            f"{rel} is out of date with params.yaml: run the stage and commit great_expectations/"
        )


def assert_fails_with(cfg, module, gx: GxConfig, fragments: list[str], **kwargs) -> str:
    with pytest.raises(StageFailed) as info:
        module.run(cfg, gx, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "Data Docs:" in message and ".html" in message
    page = message.split("Data Docs: ")[1].split("\n")[0]
    assert Path(page).exists(), page
    assert json.loads(Path(cfg.metrics).read_text())["success"] is False
    return message


# ------------------------------------------------------------------------------------- text statistics


def test_textstats():
    assert textstats.has_pii("write to jane.doe@mail.org today") and textstats.has_pii("call 555-123-4567")
    assert not textstats.has_pii("in 2022-01-01 we sold 1010 1101 items; write to [EMAIL]")
    assert textstats.is_english("This is the answer to the question.") and not textstats.is_english(GERMAN)
    base = " ".join(f"word{i}" for i in range(60))
    nd = shared_config("near_duplicate")  # the validate suite measures by dedup's definition
    assert near_duplicates.near_duplicate_rate([base, base.replace("word30", "other"), "something else entirely"],
                                               nd) == pytest.approx(2 / 3)
    texts = [base, "an unrelated evaluation text", base + " with a tail", "Train text."]
    splits = ["train", "eval", "test", "eval"]
    assert textstats.overlap_rate(texts, splits, ngram=0) == 0.0
    assert textstats.overlap_rate(texts, splits, ngram=13) == pytest.approx(1 / 3)
    assert textstats.overlap_rate(texts + ["train  TEXT."], splits + ["train"], ngram=0) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- custom expectations on Pandas and Spark


def test_custom_expectations_same_on_pandas_and_spark(spark):
    import great_expectations as gx

    from pipelines.validation import expectations as text

    nd = shared_config("near_duplicate")
    near_duplicate_keys = {k: getattr(nd, k) for k in text.NEAR_DUPLICATE_KEYS}
    base = " ".join(f"token{i}" for i in range(40))
    df = pd.DataFrame({
        "text": ["The cat is on the mat and it is happy.", base, base + " end", GERMAN,
                 "Mail me at bob@example.org for the key.", "What is the capital of France?"],
        "split": ["train", "train", "eval", "test", "eval", "test"],
    })
    make_checks = lambda: [  # noqa: E731  a suite owns its expectations: fresh ones per engine
        text.ExpectColumnPiiRateToBeBelow(column="text", max_value=0.1),
        text.ExpectColumnEnglishShareToBeAbove(column="text", min_value=0.9),
        text.ExpectColumnNearDuplicateRateToBeBelow(column="text", max_value=0.1, **near_duplicate_keys),
        text.ExpectColumnSplitOverlapRateToBeBelow(column="text", max_value=0.0, ngram=13),
        text.ExpectColumnSplitOverlapRateToBeBelow(column="text", max_value=0.0, ngram=0),
    ]
    expected = [1 / 6, 3 / 6, 2 / 6, 1 / 4, 0.0]
    context = gx.get_context(mode="ephemeral")
    observed = {}
    for engine, frame in (("pandas", df), ("spark", spark.createDataFrame(df).coalesce(1))):
        source = context.data_sources.add_pandas("p") if engine == "pandas" else context.data_sources.add_spark("s")
        batch = source.add_dataframe_asset("t").add_batch_definition_whole_dataframe("b").get_batch(
            batch_parameters={"dataframe": frame})
        # one suite, one validation: GX resolves all metrics in a single graph (fewer Spark jobs than 5 calls)
        suite_result = batch.validate(gx.ExpectationSuite(name=f"custom_{engine}", expectations=make_checks()))
        results = suite_result.results
        for r in results:
            assert not (r.exception_info or {}).get("raised_exception"), r.exception_info
        observed[engine] = [r.result["observed_value"] for r in results]
        assert [r.success for r in results] == [False, False, False, False, True], engine
    assert observed["pandas"] == pytest.approx(expected, abs=1e-5)
    assert observed["spark"] == pytest.approx(observed["pandas"], abs=1e-5)


# ----------------------------------------------------------------------------------------------- raw


def test_raw_gate_passes_on_sample_and_on_spark(tmp_path, gx_root, gx, repo_root, spark):
    corpus = write_spark_like(tiny_corpus(), tmp_path / "ingested")
    report = validate_raw.run(cfg_for(validate_raw, tmp_path, input_dir=str(corpus)), gx)
    assert report["success"] and report["row_count"] == 20 and report["failed_expectations"] == 0
    assert_committed_in_sync(gx_root, repo_root, "raw_corpus")
    history = list((gx_root / "uncommitted" / "run_summaries" / "raw_corpus").glob("*.json"))
    assert len(history) == 1  # one summary kept per run, outside DVC's outputs
    cfg = cfg_for(validate_raw, tmp_path, input_dir=str(corpus), engine="spark")
    assert validate_raw.run(cfg, gx, spark=spark)["success"]
    assert (gx_root / "checkpoints" / "raw_corpus_spark.json").exists()
    assert len(list(history[0].parent.glob("*.json"))) == 2


def test_raw_gate_blocks_missing_source_and_licence(tmp_path, gx):
    df = tiny_corpus()
    df.loc[0, "source"] = None
    df.loc[1, "licence"] = ""
    df.loc[2, "source"] = "scraped_forum"
    df.loc[3, "licence"] = "proprietary"
    df.loc[4, "kind"] = "chat"
    df.loc[5, "doc_id"] = None
    df.loc[6, "text"] = None
    path = tmp_path / "ingested"
    path.mkdir()
    df.assign(extra=1).to_parquet(path / "part-0.parquet", index=False)
    cfg = cfg_for(validate_raw, tmp_path, input_dir=str(path), min_rows=100)
    assert_fails_with(cfg, validate_raw, gx, [
        "expect_table_columns_to_match_set", "expect_table_row_count_to_be_between",
        "expect_column_values_to_not_be_null on 'source'", "expect_column_values_to_not_be_null on 'doc_id'",
        "expect_column_values_to_not_be_null on 'text'",
        "expect_column_value_lengths_to_be_between on 'licence'",
        "expect_column_values_to_be_in_set on 'source'", "expect_column_values_to_be_in_set on 'licence'",
        "expect_column_values_to_be_in_set on 'kind'", "1 unexpected rows of 20",
    ])
    # ExpectColumnValueLengthsToBeBetween on 'source' (blank source) is seen failing here:
    df2 = tiny_corpus()
    df2.loc[0, "source"] = ""
    df2.loc[0, "licence"] = None
    path2 = write_spark_like(df2, tmp_path / "ingested2")
    cfg2 = cfg_for(validate_raw, tmp_path, input_dir=str(path2), sources=None)
    assert_fails_with(cfg2, validate_raw, gx, ["expect_column_value_lengths_to_be_between on 'source'",
                                               "expect_column_values_to_not_be_null on 'licence'"])


# ------------------------------------------------------------------------------------------- curated


def test_curated_gate_warning_is_reported_not_blocking(tmp_path, gx, capsys):
    corpus = write_spark_like(tiny_corpus(), tmp_path / "corpus")
    cfg = cfg_for(validate, tmp_path, input_dir=str(corpus),
                  length_quantiles={0.5: [1, 2]})  # impossible median: fails, but it is a warning
    report = validate.run(cfg, gx, near_duplicate=shared_config("near_duplicate"))
    assert report["success"] is True and report["warnings"] == 1
    summary = json.loads((Path(cfg.results_dir) / "curated_corpus.json").read_text())
    assert summary["warning_details"][0].startswith("expect_column_length_quantiles_to_be_between on 'n_chars'")
    assert "WARNING (non-blocking)" in capsys.readouterr().out


def test_curated_gate_blocks_text_problems(tmp_path, gx):
    df = tiny_corpus()
    dup = df.iloc[[0]].assign(doc_id="dup-0")  # exact duplicate text under another id
    near = df.iloc[[10]].assign(doc_id="near-10", text=lambda d: d["text"] + " (copy)")
    df = pd.concat([df, dup, near], ignore_index=True)
    df.loc[2, "text"] = df.loc[2, "text"] + " Contact me: jane.doe@mail.org"
    for i in (12, 13, 14):
        df.loc[i, "text"] = GERMAN
        df.loc[i, "n_chars"] = len(GERMAN)
    df.loc[4, "source"] = "scraped_forum"
    df.loc[5, "kind"] = "chat"
    cfg = cfg_for(validate, tmp_path, input_dir=str(write_spark_like(df, tmp_path / "c")), max_pii_rate=0.0)
    message = assert_fails_with(cfg, validate, gx, near_duplicate=shared_config("near_duplicate"), fragments=[
        "expect_column_values_to_be_unique on 'text'",
        "expect_column_near_duplicate_rate_to_be_below on 'text': observed 0.318182",
        "expect_column_pii_rate_to_be_below on 'text': observed 0.045",
        "expect_column_english_share_to_be_above on 'text'",
        "expect_column_values_to_be_in_set on 'source'",
        "expect_column_values_to_be_in_set on 'kind'",
        "(22 rows)",
    ])
    assert "doc_id" not in message.split("Data Docs")[0].split("expect_column_values_to_be_unique on")[1][:8]


# -------------------------------------------------------------------------------------------- splits


def write_splits(tmp_path: Path, df: pd.DataFrame, labels: list[str]) -> Path:
    out = tmp_path / "splits"
    out.mkdir()
    for name in ("train", "eval", "test"):
        part = df[[lab == name for lab in labels]]
        part.to_parquet(out / f"{name}.parquet", schema=corpus_schema(), index=False)
    return out


def test_splits_gate(tmp_path, gx_root, gx, repo_root):
    df = tiny_corpus()
    labels = ["train"] * 14 + ["eval"] * 3 + ["test"] * 3
    labels[0], labels[10] = "eval", "test"
    good = write_splits(tmp_path, df, labels)
    report = validate_splits.run(cfg_for(validate_splits, tmp_path, split_dir=str(good)), gx)
    assert report["success"] and report["row_count"] == 20
    assert_committed_in_sync(gx_root, repo_root, "splits")

    bad = df.copy()
    bad.loc[14, "text"] = "  " + bad.loc[1, "text"].upper()  # eval row = a train row after normalization
    bad.loc[17, "text"] = "Preface. " + bad.loc[11, "text"][:400]  # test row carries a long train passage
    bad.loc[18, "doc_id"] = bad.loc[2, "doc_id"]  # the same document in train and test
    shutil.rmtree(good)
    path = write_splits(tmp_path, bad, labels)
    cfg = cfg_for(validate_splits, tmp_path, split_dir=str(path))
    assert_fails_with(cfg, validate_splits, gx, [
        "expect_column_values_to_be_unique on 'doc_id'",
        "expect_column_split_overlap_rate_to_be_below on 'text': observed 0.125, expected {'max_value': 0.0}",
        "expect_column_split_overlap_rate_to_be_below on 'text': observed 0.25, expected {'max_value': 0.1}",
    ])


# ------------------------------------------------------------------------------------------ embeddings


def write_embeddings(root: Path, chunks: pd.DataFrame, vectors, index_ids: list[str]) -> Path:
    root.mkdir(parents=True)
    chunks = chunks.assign(source="s", vector=[np.asarray(v, dtype=np.float32) for v in vectors])
    chunks.to_parquet(root / "chunks.parquet", index=False)
    (root / "index_ids.json").write_text(json.dumps(index_ids))
    return root


def two_chunks_per_doc(df: pd.DataFrame) -> pd.DataFrame:
    """Two overlapping chunks per document, with their character spans, as the embed stage writes them."""
    rows = []
    for doc_id, text in zip(df["doc_id"], df["text"]):
        half = len(text) // 2
        for ordinal, (start, end) in enumerate([(0, half + 10), (half - 10, len(text))]):
            rows.append({"chunk_id": f"{doc_id}:{ordinal:04d}", "doc_id": doc_id, "ordinal": ordinal,
                         "start": start, "end": end, "text": text[start:end]})
    return pd.DataFrame(rows)


def test_embeddings_gate(tmp_path, gx_root, gx, repo_root):
    df = tiny_corpus()
    corpus = write_spark_like(df, tmp_path / "corpus")
    chunks = two_chunks_per_doc(df)
    ids = list(chunks["chunk_id"])
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(ids), 384))  # params.yaml's dim, so the committed suite applies
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    emb = write_embeddings(tmp_path / "emb", chunks, vecs.tolist(), ids)
    cfg = cfg_for(validate_embeddings, tmp_path, embeddings_dir=str(emb), corpus_dir=str(corpus))
    report = validate_embeddings.run(cfg, gx)
    assert report["success"] and report["expected_documents"] == 20 and report["index_rows"] == 40
    assert_committed_in_sync(gx_root, repo_root, "embeddings")

    bad = [list(v) for v in vecs]
    bad[0] = bad[0][:4]                       # wrong dimension
    bad[1][0] = float("nan")                  # non-finite
    bad[2] = [2 * x for x in bad[2]]          # not unit norm
    broken = chunks.copy()
    broken.loc[3, "doc_id"] = "stranger"      # a chunk of no curated document
    broken.loc[4, "text"] = "not what the document says at this span"
    broken.loc[6, "chunk_id"] = broken.loc[5, "chunk_id"]  # duplicated chunk id
    broken = broken.drop(index=[36, 37, 38, 39]).reset_index(drop=True)  # the last two documents have no chunk
    emb2 = write_embeddings(tmp_path / "emb2", broken, bad[:36], list(broken["chunk_id"])[:-3])  # 3 not indexed
    cfg2 = cfg_for(validate_embeddings, tmp_path, embeddings_dir=str(emb2), corpus_dir=str(corpus))
    assert_fails_with(cfg2, validate_embeddings, gx, [
        "expect_column_values_to_be_between on 'dim'", "expect_column_values_to_be_in_set on 'finite'",
        "expect_column_values_to_be_between on 'norm'", "expect_column_values_to_be_in_set on 'in_corpus'",
        "expect_column_values_to_be_in_set on 'span_ok'", "expect_column_values_to_be_in_set on 'in_index'",
        "expect_column_values_to_be_unique on 'chunk_id'",
        "expect_column_unique_value_count_to_be_between on 'doc_id'",
        "expect_table_row_count_to_equal: observed 36, expected {'value': 33}",
    ])