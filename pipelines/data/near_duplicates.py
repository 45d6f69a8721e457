"""Near-duplicate detection: what "near-duplicate" means in this project, for dedup and validation alike.

One definition (`NearDuplicateDefinition`: the deciding keys of `dedup.near_duplicate` in params.yaml), two
executions of it:
- on Spark (dedup, and the validate suite on a Spark batch via `near_duplicate_rate_spark`): `signature_table` ->
  `candidate_pairs` -> `verified_edges` (-> connected components, `components_driver` / `components_spark`);
- in process (the validate suite on a Pandas batch): `verified_pairs`, the same signatures, the same LSH buckets
  and candidate rule, the same exact-Jaccard verification (tests/test_dedup.py checks both find the same pairs).

See `pipelines.data.minhash` for shingles, signatures and band keys. Steps:
1. signatures: one Arrow pass (`mapInArrow`) computes, per text, its sorted word-shingle hash set and the LSH band
   keys of its MinHash signature (vectorized numpy; a fixed seeded hash family, so every executor agrees);
2. LSH banding: (band, key) buckets -> candidate pairs: all pairs inside a bucket of at most `max_bucket_size`
   members; beyond that a star (every member paired with the bucket's smallest id), which bounds the pair count
   at n - 1 yet keeps the bucket in one component when the star edges verify (a bucket that big is a block of
   near-identical texts);
3. verification: each candidate pair is kept only if the EXACT Jaccard of its two shingle sets reaches
   `threshold`. LSH is only a filter: a false candidate costs one set intersection, never a wrong drop. (Checking
   signature agreement instead would be cheaper but is an estimate with a standard error of sqrt(J(1-J)/num_perm),
   ~0.035 at J=0.8 and 128 permutations: pairs near the threshold would be dropped or kept by chance.) Spark's own
   `MinHashLSH` is not used: each of its hash tables is one MinHash value (OR-amplification only, no AND within a
   band), so texts collide with probability 1-(1-J)^L and dissimilar pairs flood approxSimilarityJoin's
   verification; it also needs vocabulary-indexed sparse vectors.
4. connected components of the verified edges; the smallest doc_id of each component survives. Components are
   computed on the driver with union-find when the verified edge list is small (at most
   `driver_components_max_edges`, the common case), else in Spark with the alternating large-star / small-star
   algorithm (Kiveris et al., 2014; O(log n) rounds), so no graph package is needed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence, TypedDict

from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.data import minhash, text
from pipelines.errors import StageFailed


class NearDuplicateDefinition(StageConfig):
    """What makes two texts near-duplicates: the keys of `dedup.near_duplicate` that decide it. Dedup drops by
    them; the validate suite's expectation (`ExpectColumnNearDuplicateRateToBeBelow`) carries exactly these."""

    shingle: int = Field(ge=1)  # word n-grams of the normalized text
    num_perm: int = Field(ge=1)
    bands: int = Field(ge=1)
    rows: int = Field(ge=1)
    threshold: float = Field(gt=0.0, le=1.0)  # exact shingle Jaccard a candidate pair must reach
    # All pairs up to this bucket size, a star beyond. On t0 (bench/bench_dedup.py) 50 drops the same documents as
    # clustering all true pairs but verifies only 60% of the pairs directly; 200 finds every pair at 1.3-1.9x time.
    max_bucket_size: int = Field(ge=2)

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDuplicateDefinition":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def rule(self) -> str:
        return (
            f"minhash jaccard>={self.threshold} word-{self.shingle}-gram shingles perm={self.num_perm} "
            f"bands={self.bands}x{self.rows}, verified on exact shingle Jaccard; duplicate_of = smallest doc_id "
            "of the connected component"
        )


class NearDuplicate(NearDuplicateDefinition):
    """`dedup.near_duplicate` in params.yaml: dedup drops by it, and the validate suite measures by it (the
    definition's keys; the rest says how dedup runs and reports)."""

    enabled: bool
    driver_components_max_edges: int = Field(ge=0)  # union-find on the driver up to this many edges, else Spark
    report_clusters: int = Field(ge=0)  # largest clusters shown in the cluster report
    report_examples: int = Field(ge=1)  # texts shown per cluster


class NearDuplicateStats(TypedDict):
    candidate_pairs: int  # distinct LSH candidate pairs
    verified_pairs: int  # candidates whose exact shingle Jaccard reaches the threshold
    components_on: str  # "driver" (union-find) or "spark" (large-star / small-star)
    clusters: int
    cluster_size_histogram: dict[str, int]  # size bin ("2", "3", "4", "5-7", ...) -> clusters
    largest_cluster: int


class ClusterExample(TypedDict):
    doc_id: str
    source: str
    kept: bool  # the survivor of its cluster
    text: str  # first 600 characters


class Cluster(TypedDict):
    survivor: str
    size: int
    edge_jaccard_min: float | None  # range of its verified edges (None: not computed)
    edge_jaccard_max: float | None
    examples: list[ClusterExample]


@dataclass(frozen=True)
class NearDuplicates:
    assign: Any  # Spark DataFrame (doc_id, _survivor) of the documents to drop
    stats: NearDuplicateStats
    clusters: list[Cluster]  # the largest clusters with example texts, for the report


# --- in process: the same definition on a list of texts (the validate suite's Pandas engine) ------------------


def verified_pairs(texts: Sequence[str | None], nd: NearDuplicateDefinition) -> list[tuple[int, int, float]]:
    """(i, j, jaccard), i < j, of the texts that are near-duplicates by `nd`: the same shingles, signatures, LSH
    buckets, candidate rule (all pairs up to max_bucket_size, a star from the smallest index beyond) and exact
    Jaccard check as `candidate_pairs` + `verified_edges` on Spark (row index standing in for doc_id)."""
    import numpy as np

    values, offsets = minhash.shingle_sets(list(texts), nd.shingle)
    keys = minhash.band_keys(minhash.signatures(values, offsets, nd.num_perm), nd.bands, nd.rows)
    has = np.diff(offsets) > 0  # texts without words have no shingles: never near-duplicates
    buckets: dict[tuple[int, int], list[int]] = {}
    for i in np.flatnonzero(has):  # ascending: every bucket's members come sorted, as Spark's array_sort gives
        for band, key in enumerate(keys[i]):
            buckets.setdefault((band, int(key)), []).append(int(i))
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        if len(members) <= nd.max_bucket_size:
            pairs.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
        else:
            pairs.update((members[0], b) for b in members[1:])
    found = []
    for a, b in sorted(pairs):
        j = minhash.jaccard(values[offsets[a]:offsets[a + 1]], values[offsets[b]:offsets[b + 1]])
        if j >= nd.threshold:
            found.append((a, b, j))
    return found


def near_duplicate_rate(texts: Sequence[str | None], nd: NearDuplicateDefinition) -> float:
    """Share of texts that are a near-duplicate of another text by `nd` (exact duplicates included)."""
    if not texts:
        return 0.0
    flagged = {i for a, b, _ in verified_pairs(texts, nd) for i in (a, b)}
    return len(flagged) / len(texts)


# --- the same on a Spark DataFrame of texts (the validate suite's Spark engine) -------------------------------

ROW_ID_DIGITS = 20  # zero-padded, row ids sort as strings in row order, as indices do (the star's centre)


def verified_row_pairs_spark(df, column: str, nd: NearDuplicateDefinition):
    """`verified_pairs` of a Spark DataFrame's text column, on the executors: (a, b, jaccard) of zero-padded row
    ids (`monotonically_increasing_id`; a frame need not have doc_ids, and a broken one may repeat them)."""
    from pyspark.sql import functions as F

    row_id = F.lpad(F.monotonically_increasing_id().cast("string"), ROW_ID_DIGITS, "0")
    docs = df.select(row_id.alias("doc_id"), F.col(column).alias("text"))
    sig = signature_table(docs, nd)
    return verified_edges(candidate_pairs(sig, nd.max_bucket_size), sig, nd.threshold)


def near_duplicate_rate_spark(df, column: str, nd: NearDuplicateDefinition) -> float:
    """`near_duplicate_rate` of a Spark DataFrame's text column: distinct row ids in verified pairs over rows."""
    from pyspark.sql import functions as F

    df = df.select(column).cache()  # read once for the row count and once for the signatures
    try:
        total = df.count()
        if not total:
            return 0.0
        edges = verified_row_pairs_spark(df, column, nd)
        flagged = edges.select(F.explode(F.array("a", "b")).alias("id")).distinct().count()
    finally:
        df.unpersist()
    return flagged / total


# --- on Spark --------------------------------------------------------------------------------------------------


def signature_table(docs, nd: NearDuplicateDefinition):
    """(doc_id, text) -> (doc_id, shingles array<int> sorted unique, bands array<bigint>), one Arrow pass.

    Texts without words get no row: they have no shingles and cannot be near-duplicates."""
    from pyspark import cloudpickle

    # Ship the module's code inside the task (executors need numpy and pyarrow, not this package).
    cloudpickle.register_pickle_by_value(text)
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


def find_near_duplicates(spark, docs, nd: NearDuplicate) -> NearDuplicates:
    """The near-duplicates of `docs` (doc_id, text, source): which documents to drop for which survivor, the
    figures, and the largest clusters for the report."""
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
    stats: NearDuplicateStats = {
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
    return NearDuplicates(assign, stats, report)


def _cluster_report(docs, assign, top, jac_range, nd: NearDuplicate) -> list[Cluster]:
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
    clusters: list[Cluster] = []
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
