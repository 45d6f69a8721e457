"""embed stage: real Ray Data + sentence-transformers on a tiny corpus, then FAISS retrieval sanity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.embeddings.index import IDS, INDEX, VECTORS, read_index, read_vectors
from pipelines.engines.config import EnginesConfig, RayConfig
from pipelines.stages import embed
from pipelines.validation.corpus import corpus_schema

RAW = Path(__file__).resolve().parents[1] / "data" / "sample" / "raw"
N_PARAGRAPHS = 24
N_INSTRUCTIONS = 8


def paragraphs() -> list[dict]:
    return [json.loads(line) for line in (RAW / "xquad_en_paragraphs.jsonl").read_text().splitlines()[:N_PARAGRAPHS]]


def tiny_corpus() -> pd.DataFrame:
    rows = [
        dict(doc_id=p["id"], source="xquad_en", licence="CC-BY-SA-4.0", kind="document", text=p["text"],
             prompt=None, response=None, title=p["title"], n_chars=len(p["text"]))
        for p in paragraphs()
    ]
    for i, rec in enumerate(json.loads((RAW / "gpteacher_codegen.json").read_text())[:N_INSTRUCTIONS]):
        text = f"{rec['instruction']}\n{rec.get('input', '')}\n{rec['response']}"
        rows.append(dict(doc_id=f"code-{i}", source="gpteacher_codegen", licence="MIT", kind="instruction",
                         text=text, prompt=rec["instruction"], response=rec["response"], title=None,
                         n_chars=len(text)))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, ray_local):
    """Embed once per module: Ray Data start-up and model loading dominate, not the 32 documents."""
    root = tmp_path_factory.mktemp("embed")
    corpus = root / "corpus"
    corpus.mkdir()
    df = tiny_corpus()
    half = len(df) // 2  # two part files + _SUCCESS, as Spark writes them
    df.iloc[:half].to_parquet(corpus / "part-00000.snappy.parquet", schema=corpus_schema(), index=False)
    df.iloc[half:].to_parquet(corpus / "part-00001.snappy.parquet", schema=corpus_schema(), index=False)
    (corpus / "_SUCCESS").touch()
    cfg = embed.Config(input_dir=str(corpus), output_dir=str(root / "embeddings"), metrics=str(root / "m.json"),
                       batch_size=8, concurrency=1)
    report = embed.run(cfg, engines=EnginesConfig(ray=RayConfig(num_cpus=2)))
    return cfg, df, report


def test_one_unit_vector_per_document(embedded):
    cfg, df, report = embedded
    ids, vectors = read_vectors(cfg.output_dir)
    assert report["count"] == len(df) == len(ids) == vectors.shape[0]
    assert report["dim"] == vectors.shape[1] == 384
    assert sorted(ids) == sorted(df["doc_id"]) and ids == sorted(ids)  # every doc once, deterministic order
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    vector_type = pq.read_schema(Path(cfg.output_dir) / VECTORS).field("vector").type
    assert pa.types.is_list(vector_type) and vector_type.value_type == pa.float32()
    metrics = json.loads(Path(cfg.metrics).read_text())
    assert metrics["count"] == len(df) and metrics["docs_per_s"] > 0


def test_index_matches_vectors(embedded):
    cfg, df, _ = embedded
    out = Path(cfg.output_dir)
    assert (out / INDEX).exists() and (out / IDS).exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "atomic_dir left a temp directory"
    index, ids, manifest = read_index(out)
    assert index.ntotal == len(ids) == len(df) == manifest["count"]
    assert ids == read_vectors(out)[0]


def test_query_from_paragraph_retrieves_it_first(embedded):
    from pipelines.embeddings.retrieval import search

    cfg, _, _ = embedded
    for para in paragraphs()[::6]:
        # A sentence from the middle of the paragraph, not its opening words.
        sentences = [s for s in para["text"].split(". ") if len(s) > 40]
        query = sentences[len(sentences) // 2]
        hits = search(cfg.output_dir, query, k=3)
        assert hits[0][0] == para["id"], (query, hits)
        assert hits[0][1] > hits[1][1]
