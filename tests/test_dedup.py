"""dedup on a tiny corpus: exact duplicates hidden behind whitespace, case and Unicode width noise."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.schema import CORPUS_COLUMNS
from pipelines.data.text import normalize_text
from pipelines.data import near_duplicates
from pipelines.stages import dedup
from pipelines.stages.registry import stage_config

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


def _config(tmp, name: str, **overrides) -> dedup.Config:
    return stage_config(
        "dedup", input_dir=str(tmp / "in"), output_dir=str(tmp / name / "corpus"),
        rejects_dir=str(tmp / name / "rejects"), metrics=str(tmp / name / "m.json"),
        cluster_report=str(tmp / name / "clusters.json"), cluster_html=str(tmp / name / "clusters.html"),
        **overrides,
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
    assert report["dropped_by_reason"] == {"exact_duplicate": 4, "near_duplicate": 0}
    assert (out.num_rows, rejects.num_rows) == (3, 4)


def test_rerun_is_identical(spark, result):
    """...and sweeps what a `kill -9` of an earlier run left: its `.corpus.tmp-*` / `.rejects.tmp-*` Spark dirs."""
    import subprocess
    import sys

    from pipelines.io import tmp_sibling

    tmp, report, out, rejects = result
    cfg = _config(tmp, "two")
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # a pid that is gone, as a killed run's is
    orphans = []
    for final in (Path(cfg.output_dir), Path(cfg.rejects_dir)):
        orphan = tmp_sibling(final)
        orphan = orphan.with_name(orphan.name.replace(f"-{os.getpid()}-", f"-{killed.pid}-"))
        orphan.mkdir(parents=True)
        (orphan / "part-00000-half.snappy.parquet").write_bytes(b"torn")
        orphans.append(orphan)
    again = dedup.run(cfg, spark=spark)
    assert not [o.name for o in orphans if o.exists()]
    assert not list((tmp / "two").glob(".*.tmp-*"))
    same = lambda r: {k: v for k, v in r.items() if not k.endswith(("_dir", "_report"))}  # noqa: E731
    assert same(again) == same(report)
    assert ds.dataset(cfg.output_dir, format="parquet").to_table().equals(out)
    assert ds.dataset(cfg.rejects_dir, format="parquet").to_table().equals(rejects)


# --- near-duplicates -------------------------------------------------------------------------------------------

import random  # noqa: E402

import numpy as np  # noqa: E402

from pipelines.data import minhash  # noqa: E402


def _doc(rng: random.Random, n: int = 80) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


def _edit(words: list[str], rng: random.Random, k: int) -> list[str]:
    out = list(words)
    for _ in range(k):
        out[rng.randrange(len(out))] = rng.choice(VOCAB)
    return out


VOCAB = [f"w{i}" for i in range(3000)]


def _near_corpus() -> dict[str, str]:
    """A 3-member cluster (one edited word each), a sliding-window chain n0 ~ n1 ~ n2 whose ends are below the
    threshold (one cluster through n1), an exact duplicate of a cluster member (exact dedup runs first), two short
    texts with the same words, and unrelated texts."""
    rng = random.Random(7)
    base = _doc(rng)
    texts = {"m1": " ".join(base), "m3": " ".join(_edit(base, rng, 1)), "m2": " ".join(_edit(base, rng, 1))}
    texts["m4"] = texts["m3"].upper()  # exact duplicate of m3
    chain = _doc(rng, 120)
    for i in range(3):
        texts[f"n{i}"] = " ".join(chain[10 * i : 10 * i + 100])
    for i in range(6):
        texts[f"u{i}"] = " ".join(_doc(rng))
    texts["s0"] = "Short text."
    texts["s1"] = "Short text!"  # not the same normalized text, the same words: one shingle, Jaccard 1
    return texts


def _jac(a: str, b: str, k: int = 5) -> float:
    va, oa = minhash.shingle_sets([a], k)
    vb, ob = minhash.shingle_sets([b], k)
    return minhash.jaccard(va, vb)


def test_minhash_estimates_jaccard_and_is_batch_independent():
    rng = random.Random(1)
    base = _doc(rng, 200)
    texts = [" ".join(base)] + [" ".join(_edit(base, rng, e)) for e in (2, 5, 10, 20, 40)] + ["", "one two"]
    values, offsets = minhash.shingle_sets(texts, 5)
    sig = minhash.signatures(values, offsets, 256)
    for i in range(1, 6):
        true = minhash.jaccard(values[offsets[0]:offsets[1]], values[offsets[i]:offsets[i + 1]])
        assert abs((sig[0] == sig[i]).mean() - true) < 0.12
    assert offsets[7] - offsets[6] == 0 and (sig[6] == 0xFFFFFFFF).all()  # no words: no shingles
    assert offsets[8] - offsets[7] == 1  # shorter than k: one shingle of all its words
    # The same text gets the same signature and band keys whatever batch it is in.
    v2, o2 = minhash.shingle_sets(texts[3:5], 5)
    assert np.array_equal(minhash.signatures(v2, o2, 256), sig[3:5])
    assert np.array_equal(minhash.band_keys(sig[3:5], 32, 8), minhash.band_keys(sig, 32, 8)[3:5])
    assert minhash.candidate_probability(0.8, 16, 8) == pytest.approx(1 - (1 - 0.8**8) ** 16)


def _near_config(tmp, name: str, **nd) -> dedup.Config:
    return _config(tmp, name, near_duplicate={"threshold": 0.7, "num_perm": 128, "bands": 32, "rows": 4, **nd})


@pytest.fixture(scope="module")
def near(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("near")
    texts = _near_corpus()
    _write_corpus(tmp / "in", texts)
    cfg = _near_config(tmp, "one")
    report = dedup.run(cfg, spark=spark)
    out = ds.dataset(cfg.output_dir, format="parquet").to_table()
    rejects = ds.dataset(cfg.rejects_dir, format="parquet").to_table()
    return tmp, texts, cfg, report, out, rejects


def test_near_duplicate_clusters(near):
    tmp, texts, cfg, report, out, rejects = near
    assert _jac(texts["n0"], texts["n2"]) < 0.7 <= min(_jac(texts["n0"], texts["n1"]), _jac(texts["n1"], texts["n2"]))
    kept = set(out["doc_id"].to_pylist())
    assert kept == {"m1", "n0", "s0", *(f"u{i}" for i in range(6))}
    dropped = {r["doc_id"]: (r["reason"], r["duplicate_of"]) for r in rejects.to_pylist()}
    assert dropped == {
        "m4": ("exact_duplicate", "m3"), "s1": ("near_duplicate", "s0"),
        "m2": ("near_duplicate", "m1"), "m3": ("near_duplicate", "m1"),
        "n1": ("near_duplicate", "n0"), "n2": ("near_duplicate", "n0"),  # n2 joins n0 through n1
    }
    rule = {r["rule"] for r in rejects.to_pylist() if r["reason"] == "near_duplicate"}
    assert rule == {cfg.near_duplicate.rule()} and "perm=128 bands=32x4" in rule.pop()
    assert report["dropped_by_reason"] == {"exact_duplicate": 1, "near_duplicate": 5}
    assert report["in"] == report["out"] + report["dropped"] == len(texts)
    nd = report["near_duplicate"]
    assert (nd["clusters"], nd["cluster_size_histogram"], nd["largest_cluster"]) == (3, {"2": 1, "3": 2}, 3)
    assert nd["verified_pairs"] >= 4 and nd["candidate_pairs"] >= nd["verified_pairs"]
    clusters = json.loads(Path(cfg.cluster_report).read_text())["clusters"]
    assert [c["survivor"] for c in clusters] == ["m1", "n0", "s0"] and clusters[0]["examples"][0]["kept"]
    assert "m1" in Path(cfg.cluster_html).read_text()


def test_near_duplicate_spark_components_and_star_buckets_agree(spark, near):
    """Components in Spark (large-star/small-star) and stars for every bucket give the same output."""
    tmp, texts, cfg, report, out, rejects = near
    cfg2 = _near_config(tmp, "spark_cc", driver_components_max_edges=0, max_bucket_size=2)
    again = dedup.run(cfg2, spark=spark)
    assert again["near_duplicate"]["components_on"] == "spark"
    assert again["dropped_by_reason"] == report["dropped_by_reason"]
    assert ds.dataset(cfg2.output_dir, format="parquet").to_table().equals(out)
    assert ds.dataset(cfg2.rejects_dir, format="parquet").to_table().equals(rejects)


def test_components_spark_matches_union_find(spark):
    rng = random.Random(3)
    nodes = [f"v{i:03d}" for i in range(150)]
    edges = sorted({tuple(sorted(rng.sample(nodes, 2))) for _ in range(120)})
    expected = {n: r for n, r in near_duplicates.components_driver(edges).items() if n != r}
    df = spark.createDataFrame(edges, "a string, b string")
    got = {r["node"]: r["root"] for r in near_duplicates.components_spark(df).collect()}
    assert got == expected


def _suite_near_duplicate_rate(frame, nd, engine: str) -> float:
    """The validate suite's near-duplicate expectation, at `nd`, on a Pandas or Spark batch: its observed rate."""
    import great_expectations as gx

    from pipelines.validation import expectations as text

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("p") if engine == "pandas" else context.data_sources.add_spark("s")
    batch = source.add_dataframe_asset("t").add_batch_definition_whole_dataframe("b").get_batch(
        batch_parameters={"dataframe": frame})
    result = batch.validate(text.ExpectColumnNearDuplicateRateToBeBelow.by_definition(nd, column="text",
                                                                                      max_value=0.0))
    assert not (result.exception_info or {}).get("raised_exception"), result.exception_info
    return result.result["observed_value"]


@pytest.mark.parametrize("engine", ["pandas", "spark"])
def test_validate_near_duplicate_rate_is_zero_on_dedup_output(near, spark, engine):
    """One definition of near-duplicate: in what dedup leaves, the validate suite's metric finds none at dedup's
    own settings; in dedup's input (planted near-duplicates) it does."""
    import pandas as pd

    _, texts, cfg, _, out, _ = near
    frames = {
        "output": pd.DataFrame({"text": out.column("text").to_pylist()}),
        "input": pd.DataFrame({"text": list(texts.values())}),
    }
    if engine == "spark":
        frames = {k: spark.createDataFrame(v) for k, v in frames.items()}
    nd = cfg.near_duplicate
    assert _suite_near_duplicate_rate(frames["output"], nd, engine) == 0.0
    # m1 m2 m3 m4, n0 n1 n2, s0 s1 of 15 rows (m4 an exact duplicate of m3: it is a near-duplicate too)
    assert _suite_near_duplicate_rate(frames["input"], nd, engine) == pytest.approx(9 / 15, abs=1e-6)


@pytest.mark.parametrize("max_bucket_size", [50, 2], ids=["all_pairs", "stars"])
def test_in_process_and_spark_near_duplicates_find_the_same_pairs(near, spark, max_bucket_size):
    """The numpy path (the suite's Pandas engine) and the Spark path (dedup, the suite's Spark engine) verify the
    same pairs with the same Jaccard, for all-pairs buckets and for stars (every bucket above 2 members)."""
    _, texts, cfg, _, _, _ = near
    corpus = [*texts.values(), None, "", "!!! ...", texts["u0"]]  # no words: never a pair; u0 twice
    nd = cfg.near_duplicate.model_copy(update={"max_bucket_size": max_bucket_size})
    local = near_duplicates.verified_pairs(corpus, nd)
    frame = spark.createDataFrame([(t,) for t in corpus], "text string").coalesce(1)  # row ids 0..n-1 in order
    on_spark = sorted(
        (int(r["a"]), int(r["b"]), r["jaccard"])
        for r in near_duplicates.verified_row_pairs_spark(frame, "text", nd).collect()
    )
    assert [(a, b) for a, b, _ in local] == [(a, b) for a, b, _ in on_spark]
    assert [j for _, _, j in local] == pytest.approx([j for _, _, j in on_spark])
    index = {name: i for i, name in enumerate(texts)}
    pairs = {(a, b) for a, b, _ in local}
    assert (index["n0"], index["n1"]) in pairs and (index["n0"], index["n2"]) not in pairs  # below the threshold
    assert (index["u0"], len(corpus) - 1) in pairs  # an exact duplicate is a near-duplicate too
    assert not {i for p in pairs for i in p} & {len(texts), len(texts) + 1, len(texts) + 2}  # no words
