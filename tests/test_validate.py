"""validate stage: the real GX 1.x file context on a tiny corpus; broken data must stop the stage by name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines.stages import validate
from pipelines.stages.registry import shared_config, stage_config
from pipelines.errors import StageFailed
from pipelines.schema import corpus_schema, read_corpus

RAW = Path(__file__).resolve().parents[1] / "data" / "sample" / "raw"


def tiny_corpus() -> pd.DataFrame:
    """A corpus-shaped frame from the shipped samples: 10 instructions + 10 xquad paragraphs."""
    rows = []
    for i, rec in enumerate(json.loads((RAW / "gpteacher_roleplay.json").read_text())[:10]):
        prompt = f"{rec['instruction']}\n{rec.get('input', '')}".strip()
        text = f"{prompt}\n{rec['response']}"
        rows.append(dict(doc_id=f"gpt-{i}", source="gpteacher_roleplay", licence="MIT", kind="instruction",
                         text=text, prompt=prompt, response=rec["response"], rejected=None, title=None,
                         n_chars=len(text)))
    for line in (RAW / "xquad_en_paragraphs.jsonl").read_text().splitlines()[:10]:
        rec = json.loads(line)
        rows.append(dict(doc_id=rec["id"], source="xquad_en", licence="CC-BY-SA-4.0", kind="document",
                         text=rec["text"], prompt=None, response=None, rejected=None, title=rec["title"],
                         n_chars=len(rec["text"])))
    return pd.DataFrame(rows)


def write_spark_like(df: pd.DataFrame, path: Path) -> Path:
    """Two part files plus _SUCCESS, as Spark writes them."""
    path.mkdir(parents=True)
    half = len(df) // 2
    df.iloc[:half].to_parquet(path / "part-00000-x.snappy.parquet", schema=corpus_schema(), index=False)
    df.iloc[half:].to_parquet(path / "part-00001-x.snappy.parquet", schema=corpus_schema(), index=False)
    (path / "_SUCCESS").touch()
    return path


@pytest.fixture()
def gx_root(tmp_path, repo_root) -> Path:
    """A copy of the committed GX project, so tests never touch the repo's files."""
    root = tmp_path / "gx"
    shutil.copytree(repo_root / "great_expectations", root, ignore=shutil.ignore_patterns("uncommitted"))
    return root


def make_cfg(tmp_path: Path, gx_root: Path, input_dir: Path, repo_root: Path) -> validate.Config:
    """params.yaml's own thresholds, with every path moved into tmp_path."""
    return stage_config("validate", repo_root / "params.yaml", input_dir=str(input_dir),
                        results_dir=str(tmp_path / "results"), metrics=str(tmp_path / "metrics.json"))


def _shared(gx_root: Path) -> dict:
    """The shared sections validate's `run` takes: the GX context (a copy) and dedup's near-duplicate definition."""
    return {"gx": shared_config("gx", context_root=str(gx_root)), "near_duplicate": shared_config("near_duplicate")}


def test_read_corpus_skips_spark_markers(tmp_path):
    df = tiny_corpus()
    got = read_corpus(write_spark_like(df, tmp_path / "corpus"))
    assert len(got) == len(df) and set(got.columns) == set(df.columns)


def test_good_corpus_passes_and_committed_suite_is_in_sync(tmp_path, gx_root, repo_root):
    cfg = make_cfg(tmp_path, gx_root, write_spark_like(tiny_corpus(), tmp_path / "corpus"), repo_root)
    report = validate.run(cfg, **_shared(gx_root))

    assert report["success"] is True
    assert report["failed_expectations"] == 0
    assert report["evaluated_expectations"] >= 9
    assert report["row_count"] == 20
    metrics = json.loads(Path(cfg.metrics).read_text())
    assert {"success", "evaluated_expectations", "failed_expectations", "row_count"} <= metrics.keys()
    summary = json.loads((Path(cfg.results_dir) / f"{cfg.suite}.json").read_text())
    assert all(r["success"] for r in summary["results"])
    assert (gx_root / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    # Rebuilding from params.yaml must reproduce the committed JSON byte for byte (stable ids, same thresholds).
    for rel in (f"expectations/{cfg.suite}.json", f"validation_definitions/{cfg.suite}.json",
                f"checkpoints/{cfg.suite}.json"):
        committed = repo_root / "great_expectations" / rel
        assert committed.exists(), f"{rel} not committed"
        assert (gx_root / rel).read_text() == committed.read_text(), (
            f"{rel} is out of date with params.yaml: run `llmops run validate` and commit great_expectations/"
        )


def _pair(df: pd.DataFrame, rejected: str | None = "A shorter, worse answer than the chosen one.") -> pd.DataFrame:
    df.loc[0, "kind"], df.loc[0, "rejected"] = "preference", rejected
    return df


def test_preference_rows_pass(tmp_path, gx_root, repo_root):
    cfg = make_cfg(tmp_path, gx_root, write_spark_like(_pair(tiny_corpus()), tmp_path / "corpus"), repo_root)
    assert validate.run(cfg, **_shared(gx_root))["success"] is True


def _pair_without_rejected(df: pd.DataFrame) -> pd.DataFrame:
    return _pair(df, None)


def _rejected_on_an_instruction(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[2, "rejected"] = "an instruction row has no rejected answer"
    return df


def _chosen_is_rejected(df: pd.DataFrame) -> pd.DataFrame:
    return _pair(df, df.loc[0, "response"])


def _duplicate_id(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[1, "doc_id"] = df.loc[0, "doc_id"]
    return df


def _null_licence(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, "licence"] = None
    return df


def _short_text(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[5, "text"] = "too short"
    df.loc[5, "n_chars"] = len("too short")
    return df


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_duplicate_id, ["expect_column_values_to_be_unique on 'doc_id'", "2 unexpected"]),
        (_null_licence, ["expect_column_values_to_not_be_null on 'licence'", "1 unexpected"]),
        (_short_text, ["expect_column_values_to_be_between on 'n_chars'",
                       "expect_column_value_lengths_to_be_between on 'text'"]),
        (_pair_without_rejected, ["expect_column_values_to_not_be_null on 'rejected'"]),
        (_rejected_on_an_instruction, ["expect_column_values_to_be_null on 'rejected'"]),
        (_chosen_is_rejected, ["expect_select_column_values_to_be_unique_within_record"]),
    ],
    ids=["duplicate_doc_id", "null_licence", "short_text", "pair_without_rejected", "rejected_on_an_instruction",
         "chosen_is_rejected"],
)
def test_broken_corpus_fails_with_named_expectation(tmp_path, gx_root, repo_root, breakage, expected):
    cfg = make_cfg(tmp_path, gx_root, write_spark_like(breakage(tiny_corpus()), tmp_path / "corpus"), repo_root)
    with pytest.raises(StageFailed) as info:
        validate.run(cfg, **_shared(gx_root))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, message
    assert "Data Docs:" in message and "index.html" in message
    metrics = json.loads(Path(cfg.metrics).read_text())
    assert metrics["success"] is False and metrics["failed_expectations"] >= 1


def test_min_chars_above_max_is_a_config_error():
    with pytest.raises(ValueError, match="min_chars"):
        stage_config("validate", min_chars=10, max_chars=5)
