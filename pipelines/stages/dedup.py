"""dedup: exact duplicates first, then near-duplicates (MinHash-LSH clusters); one deterministic survivor each.

Exact: rows whose normalized text (NFKC, lowercase, collapsed whitespace, stripped) hashes the same form a group;
the row with the smallest doc_id survives. A choice that depends on the data only, never on partitioning or file
order.

Near-duplicate (on the exact survivors), see `pipelines.data.minhash` for the definitions:
1. signatures: one Arrow pass (`mapInArrow`) computes, per text, its sorted word-shingle hash set and the LSH band
   keys of its MinHash signature (vectorized numpy; a fixed seeded hash family, so every executor agrees);
2. LSH banding: (band, key) buckets -> candidate pairs: all pairs inside a bucket of at most `max_bucket_size`
   members; beyond that a star (every member paired with the bucket's smallest doc_id), which bounds the pair count
   at n - 1 yet keeps the bucket in one component when the star edges verify (a bucket that big is a block of
   near-identical texts);
3. verification: each candidate pair is kept only if the EXACT Jaccard of its two shingle sets (Spark SQL
   `array_intersect`, native, no Python) reaches `threshold`. LSH is only a filter: a false candidate costs one set
   intersection, never a wrong drop. (Checking signature agreement instead would be cheaper but is an estimate with
   a standard error of sqrt(J(1-J)/num_perm), ~0.035 at J=0.8 and 128 permutations: pairs near the threshold
   would be dropped or kept by chance.) Spark's own `MinHashLSH` is not used: each of its hash tables is one
   MinHash value (OR-amplification only, no AND within a band), so texts collide with probability 1-(1-J)^L and
   dissimilar pairs flood approxSimilarityJoin's verification; it also needs vocabulary-indexed sparse vectors.
4. connected components of the verified edges; the smallest doc_id of each component survives, every other member
   is rejected with reason `near_duplicate` and `duplicate_of` = the survivor. Components are computed on the
   driver with union-find when the verified edge list is small (at most `driver_components_max_edges`, the common
   case: edges are bounded by the number of dropped rows times a small factor), else in Spark with the alternating
   large-star / small-star algorithm (Kiveris et al., 2014; O(log n) rounds), so no graph package is needed.

Every dropped row goes to the rejects table with its reason, rule and the doc_id it duplicates; `in == out +
dropped(exact) + dropped(near)` is checked on what was written. The output has the same columns as the input
(every column is passed through). A cluster report (JSON + HTML: sizes, largest clusters with example texts) is
written next to the metrics.
"""
from __future__ import annotations

import html
from collections import Counter

from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.schema import CORPUS_COLUMNS, MAX_RAW_CHARS
from pipelines.engines.spark import count_by, session, spark_path
from pipelines.engines.config import EnginesConfig
from pipelines.io import atomic_path, write_json, write_text
from pipelines.errors import StageFailed

SECTION = "dedup"
STAGE = "dedup"
RULE = "sha256(NFKC + lowercase + collapsed whitespace + strip of text) equals that of duplicate_of"


class NearDuplicate(StageConfig):
    enabled: bool = True
    shingle: int = Field(default=5, ge=1)  # word n-grams of the normalized text
    num_perm: int = Field(default=120, ge=1)
    bands: int = Field(default=20, ge=1)
    rows: int = Field(default=6, ge=1)
    threshold: float = Field(default=0.8, gt=0.0, le=1.0)  # exact shingle Jaccard a candidate pair must reach
    # All pairs up to this bucket size, a star beyond. On t0 (bench/bench_dedup.py) 50 drops the same documents as
    # clustering all true pairs but verifies only 60% of the pairs directly; 200 finds every pair at 1.3-1.9x time.
    max_bucket_size: int = Field(default=50, ge=2)
    driver_components_max_edges: int = Field(default=2_000_000, ge=0)  # union-find on the driver up to this
    report_clusters: int = Field(default=20, ge=0)  # largest clusters shown in the cluster report
    report_examples: int = Field(default=3, ge=1)  # texts shown per cluster

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDuplicate":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def rule(self) -> str:
        return (
            f"minhash jaccard>={self.threshold} word-{self.shingle}-gram shingles perm={self.num_perm} "
            f"bands={self.bands}x{self.rows}, verified on exact shingle Jaccard; duplicate_of = smallest doc_id "
            "of the connected component"
        )


class Config(StageConfig):
    input_dir: str = "data/interim/ingested"
    output_dir: str = "data/curated/corpus"
    rejects_dir: str = "data/rejects/dedup"
    metrics: str = "metrics/dedup.json"
    cluster_report: str = "reports/dedup_clusters.json"
    cluster_html: str = "reports/dedup_clusters.html"
    output_files: int = Field(default=1, ge=1)
    near_duplicate: NearDuplicate = NearDuplicate()


# --- exact ---------------------------------------------------------------------------------------------------


def _normalized_hash(col):
    """sha256 of the normalized text. Spark SQL has no NFKC, so a Python UDF normalizes; it is self-contained
    (stdlib only, pickled by value) so executors need neither this package nor pandas installed.
    Same rule as `pipelines.data.text.normalize_text`."""
    from pyspark.sql import functions as F

    def normalize(text):
        import re
        import unicodedata

        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or "").lower()).strip()

    # useArrow=False: Spark 4 defaults Python UDFs to Arrow, which would need pyarrow on every executor.
    return F.sha2(F.udf(normalize, "string", useArrow=False)(col), 256)


def _mark(df):
    """Per row: `_hash`, `_rank` within its hash group (1 = survivor), `_survivor` doc_id and `_group_size`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_hash = Window.partitionBy("_hash")
    ordered = by_hash.orderBy("doc_id", "source")
    return (
        df.withColumn("_hash", _normalized_hash(F.col("text")))
        .withColumn("_rank", F.row_number().over(ordered))
        .withColumn("_survivor", F.first("doc_id").over(ordered))
        .withColumn("_group_size", F.count(F.lit(1)).over(by_hash))
    )


def _rejects(dropped, reason: str, rule: str):
    from pyspark.sql import functions as F

    return dropped.select(
        "source",
        F.lit(None).cast("string").alias("path"),
        F.lit(None).cast("long").alias("line"),
        F.substring("text", 1, MAX_RAW_CHARS).alias("raw"),
        F.lit(reason).alias("reason"),
        F.lit(rule).alias("rule"),
        F.lit(STAGE).alias("stage"),
        "doc_id",
        F.col("_survivor").alias("duplicate_of"),
    )


# --- near-duplicate ------------------------------------------------------------------------------------------


def signature_table(docs, nd: NearDuplicate):
    """(doc_id, text) -> (doc_id, shingles array<int> sorted unique, bands array<bigint>), one Arrow pass.

    Texts without words get no row: they have no shingles and cannot be near-duplicates."""
    from pyspark import cloudpickle

    from pipelines.data import minhash

    # Ship the module's code inside the task (executors need numpy and pyarrow, not this package).
    cloudpickle.register_pickle_by_value(minhash)
    k, num_perm, bands, rows = nd.shingle, nd.num_perm, nd.bands, nd.rows

    def compute(batches):
        import numpy as np
        import pyarrow as pa

        for batch in batches:
            texts = batch.column("text").to_pylist()
            values, offsets = minhash.shingle_sets(texts, k)
            keys = minhash.band_keys(minhash.signatures(values, offsets, num_perm), bands, rows)
            keep = np.flatnonzero(np.diff(offsets) > 0)
            if len(keep) == 0:
                continue
            # Texts without shingles own no values, so dropping them only drops their (repeated) offsets.
            starts = np.concatenate([offsets[keep], offsets[-1:]]).astype(np.int32)
            shingles = pa.ListArray.from_arrays(pa.array(starts), pa.array(values.view(np.int32)))
            band_arr = pa.FixedSizeListArray.from_arrays(pa.array(keys[keep].reshape(-1)), bands)
            yield pa.RecordBatch.from_arrays(
                [batch.column("doc_id").take(pa.array(keep)), shingles, band_arr.cast(pa.list_(pa.int64()))],
                names=["doc_id", "shingles", "bands"],
            )

    return docs.select("doc_id", "text").mapInArrow(
        compute, "doc_id string, shingles array<int>, bands array<bigint>"
    )


def candidate_pairs(sig, max_bucket_size: int):
    """Distinct (a, b), a < b, of doc_ids sharing at least one LSH bucket (all pairs, or a star in huge buckets)."""
    from pyspark.sql import functions as F

    buckets = sig.select("doc_id", F.posexplode("bands").alias("band", "key"))
    groups = (
        buckets.groupBy("band", "key")
        .agg(F.array_sort(F.collect_list("doc_id")).alias("m"))
        .where(F.size("m") > 1)
    )
    pairs = F.expr(
        f"""IF(size(m) <= {int(max_bucket_size)},
            flatten(transform(sequence(1, size(m) - 1),
                i -> transform(slice(m, i + 1, size(m) - i), y -> named_struct('a', m[i - 1], 'b', y)))),
            transform(slice(m, 2, size(m) - 1), y -> named_struct('a', m[0], 'b', y)))"""
    )
    return groups.select(F.explode(pairs).alias("p")).select("p.a", "p.b").distinct()


def verified_edges(pairs, sig, threshold: float):
    """Candidate pairs whose exact shingle Jaccard reaches `threshold`: (a, b, jaccard)."""
    from pyspark.sql import functions as F

    sa = sig.select(F.col("doc_id").alias("a"), F.col("shingles").alias("sa"))
    sb = sig.select(F.col("doc_id").alias("b"), F.col("shingles").alias("sb"))
    inter = F.size(F.array_intersect("sa", "sb"))
    jac = inter / (F.size("sa") + F.size("sb") - inter)
    return (
        pairs.join(sa, "a").join(sb, "b")
        .select("a", "b", jac.alias("jaccard"))
        .where(F.col("jaccard") >= F.lit(threshold))
    )


def components_driver(edges: list[tuple[str, str]]) -> dict[str, str]:
    """node -> smallest node of its connected component (union-find, path halving, min as root)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            parent[rb] = ra
    return {x: find(x) for x in list(parent)}


def components_spark(edges, max_rounds: int = 64):
    """(a, b) edges -> DataFrame (node, root) with root = smallest node of the component, for every non-root node.

    Alternating large-star / small-star (Kiveris et al., "Connected Components in MapReduce and Beyond", 2014):
    each round only re-points nodes at smaller neighbours' minima, so the edge set converges to one star per
    component, rooted at its minimum, in O(log n) rounds. Lineage is cut every round (localCheckpoint)."""
    from pyspark.sql import functions as F

    e = edges.select(F.greatest("a", "b").alias("x"), F.least("a", "b").alias("y")).distinct().localCheckpoint()
    for _ in range(max_rounds):
        # Large star: for each node x, m = min(x, N(x)); every neighbour y > x is re-pointed to m.
        both = e.union(e.select(F.col("y").alias("x"), F.col("x").alias("y")))
        m = both.groupBy("x").agg(F.least(F.min("y"), F.first("x")).alias("m"))
        large = both.join(m, "x").where(F.col("y") > F.col("x")).select(F.col("y").alias("x"), F.col("m").alias("y"))
        large = large.distinct()
        # Small star: for each node x, m = min of its smaller neighbours; x and those neighbours point to m.
        sm = large.groupBy("x").agg(F.min("y").alias("m"))
        small = (
            large.join(sm, "x")
            .select(F.col("y").alias("x"), "m")
            .union(sm.select("x", "m"))
            .where(F.col("x") != F.col("m"))
            .select("x", F.col("m").alias("y"))
            .distinct()
            .localCheckpoint()
        )
        diff = small.withColumn("_new", F.lit(1)).join(e.withColumn("_old", F.lit(1)), ["x", "y"], "full_outer")
        changed = diff.where(F.col("_new").isNull() | F.col("_old").isNull()).limit(1).count()
        e = small
        if changed == 0:
            return e.select(F.col("x").alias("node"), F.col("y").alias("root"))
    raise StageFailed(f"dedup: connected components did not converge in {max_rounds} rounds")


def _size_bin(size: int) -> str:
    if size <= 4:
        return str(size)
    lo = 1 << (size.bit_length() - 1)
    return f"{max(lo, 5)}-{2 * lo - 1}"  # 2, 3, 4, 5-7, 8-15, 16-31, ...


def _histogram(sizes: list[int]) -> dict[str, int]:
    counts = Counter(_size_bin(s) for s in sizes)
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0].split("-")[0])))


def _near_duplicates(spark, docs, nd: NearDuplicate) -> tuple:
    """Returns (assign: DataFrame (doc_id, _survivor) of the dropped near-duplicates, stats, report clusters)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    sig = signature_table(docs, nd).persist(StorageLevel.MEMORY_AND_DISK)
    scored = verified_edges(candidate_pairs(sig, nd.max_bucket_size), sig, 0.0).persist(StorageLevel.MEMORY_AND_DISK)
    counts = scored.agg(
        F.count(F.lit(1)).alias("candidates"),
        F.coalesce(F.sum((F.col("jaccard") >= nd.threshold).cast("long")), F.lit(0)).alias("verified"),
    ).first()
    n_candidates, n_edges = counts["candidates"], counts["verified"]
    edges = scored.where(F.col("jaccard") >= F.lit(nd.threshold))
    if n_edges <= nd.driver_components_max_edges:
        # Few edges (the usual case: about one per dropped row): collecting them costs less than Spark rounds.
        edge_rows = [(r["a"], r["b"], r["jaccard"]) for r in edges.collect()]
        root = components_driver([(a, b) for a, b, _ in edge_rows])
        members = sorted((n, r) for n, r in root.items() if n != r)
        assign = spark.createDataFrame(members, "doc_id string, _survivor string")
        where = "driver"
        size_of = Counter(r for _, r in members)
        jac_of: dict[str, list[float]] = {}
        for a, _, j in edge_rows:
            jac_of.setdefault(root[a], []).append(j)
        jac_range = {r: (min(v), max(v)) for r, v in jac_of.items()}
    else:
        assign = components_spark(edges).select(F.col("node").alias("doc_id"), F.col("root").alias("_survivor"))
        where = "spark"
        assign = assign.persist(StorageLevel.MEMORY_AND_DISK)
        size_of = {r["_survivor"]: r["count"] for r in assign.groupBy("_survivor").count().collect()}
        jac_range = None
    sizes = sorted(((r, n + 1) for r, n in size_of.items()), key=lambda rs: (-rs[1], rs[0]))
    stats = {
        "candidate_pairs": n_candidates,
        "verified_pairs": n_edges,
        "components_on": where,
        "clusters": len(sizes),
        "cluster_size_histogram": _histogram([s for _, s in sizes]),
        "largest_cluster": sizes[0][1] if sizes else 0,
    }
    top = sizes[: nd.report_clusters]
    if jac_range is None and top:
        roots = [r for r, _ in top]
        tagged = edges.join(assign.select(F.col("doc_id").alias("b"), "_survivor"), "b")
        rows = (
            tagged.where(F.col("_survivor").isin(roots)).groupBy("_survivor")
            .agg(F.min("jaccard").alias("lo"), F.max("jaccard").alias("hi")).collect()
        )
        jac_range = {r["_survivor"]: (r["lo"], r["hi"]) for r in rows}
    report = _cluster_report(docs, assign, top, jac_range or {}, nd)
    sig.unpersist()
    scored.unpersist()
    return assign, stats, report


def _cluster_report(docs, assign, top, jac_range, nd: NearDuplicate) -> list[dict]:
    """The largest clusters: survivor, size, Jaccard range of their verified edges, example texts."""
    from pyspark.sql import functions as F

    if not top:
        return []
    roots = [r for r, _ in top]
    members = assign.where(F.col("_survivor").isin(roots)).select("doc_id", F.col("_survivor").alias("root"))
    # Survivor and the first few members per cluster (by doc_id) are enough for examples.
    wanted = {r: [r] for r in roots}
    for row in members.orderBy("doc_id").collect():
        if len(wanted[row["root"]]) < nd.report_examples:
            wanted[row["root"]].append(row["doc_id"])
    ids = [d for v in wanted.values() for d in v]
    picked = docs.where(F.col("doc_id").isin(ids)).select("doc_id", "source", "text")
    texts = {r["doc_id"]: r for r in picked.collect()}
    clusters = []
    for root, size in top:
        lo, hi = jac_range.get(root, (None, None))
        rows = [texts[d] for d in sorted(wanted[root]) if d in texts]
        clusters.append({
            "survivor": root,
            "size": size,
            "edge_jaccard_min": None if lo is None else round(lo, 4),
            "edge_jaccard_max": None if hi is None else round(hi, 4),
            "examples": [
                {"doc_id": r["doc_id"], "source": r["source"], "kept": r["doc_id"] == root, "text": r["text"][:600]}
                for r in rows
            ],
        })
    return clusters


def _html(report: dict) -> str:
    nd = report["near_duplicate"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dedup clusters</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}pre{white-space:pre-wrap;background:#f6f6f6;"
        "padding:.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}</style>",
        "</head><body><h1>Near-duplicate clusters</h1>",
        f"<p>{html.escape(report['rule'])}</p>",
        f"<p>in {report['in']} &rarr; out {report['out']}; dropped: "
        + ", ".join(f"{k} {v}" for k, v in report["dropped_by_reason"].items())
        + f"; clusters {nd.get('clusters', 0)}; candidate pairs {nd.get('candidate_pairs', 0)}, "
        f"verified {nd.get('verified_pairs', 0)}</p>",
        "<h2>Cluster sizes</h2><table><tr><th>size</th><th>clusters</th></tr>",
        *(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in nd.get("cluster_size_histogram", {}).items()),
        "</table><h2>Largest clusters</h2>",
    ]
    for c in report["clusters"]:
        parts.append(
            f"<h3>{html.escape(c['survivor'])}: {c['size']} documents, edge Jaccard "
            f"{c['edge_jaccard_min']}&ndash;{c['edge_jaccard_max']}</h3>"
        )
        for ex in c["examples"]:
            tag = "kept" if ex["kept"] else "dropped"
            parts.append(
                f"<p><b>{tag}</b> {html.escape(ex['doc_id'])} ({html.escape(ex['source'])})</p>"
                f"<pre>{html.escape(ex['text'])}</pre>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


# --- stage ---------------------------------------------------------------------------------------------------


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = session(engines, spark)
    corpus = spark.read.parquet(spark_path(cfg.input_dir))
    missing = [c for c in CORPUS_COLUMNS if c not in corpus.columns]
    if missing:
        raise StageFailed(f"dedup: {cfg.input_dir} lacks corpus column(s) {', '.join(missing)}; run ingest first")
    columns = list(corpus.columns)  # every column passes through (CORPUS_COLUMNS may grow)
    marked = _mark(corpus).persist(StorageLevel.MEMORY_AND_DISK)

    stats = marked.agg(
        F.count(F.lit(1)).alias("in"),
        F.sum(F.when((F.col("_rank") == 2), 1).otherwise(0)).alias("groups"),
    ).first()
    n_in, groups = stats["in"], stats["groups"] or 0
    exact_kept = marked.where(F.col("_rank") == 1).select(*columns)
    exact_dropped = marked.where(F.col("_rank") > 1)

    nd = cfg.near_duplicate
    near_stats: dict = {"enabled": nd.enabled}
    clusters: list[dict] = []
    if nd.enabled:
        assign, found, clusters = _near_duplicates(spark, exact_kept, nd)
        near_stats.update(found)
        kept = exact_kept.join(assign.select("doc_id"), "doc_id", "left_anti").select(*columns)
        near_dropped = exact_kept.join(assign, "doc_id")
    else:
        kept = exact_kept
        near_dropped = None

    with atomic_path(cfg.output_dir) as out_tmp, atomic_path(cfg.rejects_dir) as rej_tmp:
        kept.orderBy("doc_id").coalesce(cfg.output_files).write.parquet(spark_path(out_tmp))
        dropped = _rejects(exact_dropped, "exact_duplicate", RULE)
        if near_dropped is not None:
            dropped = dropped.unionByName(_rejects(near_dropped, "near_duplicate", nd.rule()))
        dropped.orderBy("reason", "duplicate_of", "doc_id").coalesce(1).write.parquet(spark_path(rej_tmp))
        # Count what was written: the equation must hold for the files the next stages read.
        by_source = count_by(spark.read.parquet(spark_path(out_tmp)), "source")
        n_out = sum(by_source.values())
        rejected = count_by(spark.read.parquet(spark_path(rej_tmp)), "reason", "source")
        by_reason: Counter = Counter()
        dropped_by_source: Counter = Counter()
        for (reason, source), n in rejected.items():
            by_reason[reason] += n
            dropped_by_source[source] += n
        n_dropped = sum(by_reason.values())
        by_source = {k[0]: v for k, v in by_source.items()}
        if n_in != n_out + n_dropped:
            raise StageFailed(
                f"dedup accounting failed: in={n_in} != out={n_out} + dropped={n_dropped} ({by_reason})"
            )
    marked.unpersist()
    if nd.enabled:
        assign.unpersist()

    report = {
        "stage": STAGE,
        "in": n_in,
        "out": n_out,
        "dropped": n_dropped,
        "dropped_by_reason": {
            "exact_duplicate": by_reason.get("exact_duplicate", 0),
            "near_duplicate": by_reason.get("near_duplicate", 0),
        },
        "duplicate_groups": groups,
        "near_duplicate": near_stats,
        "out_by_source": dict(sorted(by_source.items())),
        "dropped_by_source": dict(sorted(dropped_by_source.items())),
        "balanced": n_in == n_out + n_dropped,
        "output_dir": cfg.output_dir,
        "rejects_dir": cfg.rejects_dir,
        "cluster_report": cfg.cluster_report,
    }
    write_json(cfg.metrics, report)
    full = {**report, "rule": nd.rule() if nd.enabled else "near-duplicate dedup disabled", "clusters": clusters}
    write_json(cfg.cluster_report, full)
    write_text(cfg.cluster_html, _html(full))
    return report
