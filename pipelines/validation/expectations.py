"""Custom GX 1.x expectations for text corpora: PII rate, language share, near-duplicate rate, split overlap.

Written the way GX 1.x expects: a `ColumnAggregateMetricProvider` computes a column-domain metric (one
implementation per execution engine, registered by the `@metric_value` decorator), and a
`ColumnAggregateExpectation` subclass declares the metric it depends on, its success keys and `_validate`.
Defining the classes registers them (GX's metaclass), so importing this module before a suite is loaded is all a
file context needs: `gx_project` imports it, and the stored suites name them by snake-case type.

Engines: Pandas computes with `pipelines.validation.textstats` and `pipelines.data.near_duplicates`; Spark runs
the same logic on the executors (a native `rlike` / `array_intersect` aggregate for PII and language, dedup's own
Spark near-duplicate detection, deterministic shingle-hash UDFs plus explode/join for overlap), so only a handful
of numbers come back to the driver.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Tuple

from great_expectations.compatibility.pyspark import functions as F
from great_expectations.compatibility.pyspark import types as T
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.execution_engine import PandasExecutionEngine, SparkDFExecutionEngine
from great_expectations.expectations.core.expect_column_quantile_values_to_be_between import (
    ExpectColumnQuantileValuesToBeBetween,
)
from great_expectations.expectations.expectation import ColumnAggregateExpectation
from great_expectations.expectations.metrics.column_aggregate_metric_provider import (
    ColumnAggregateMetricProvider,
)
from great_expectations.expectations.metrics.metric_provider import metric_value

from pipelines.data import near_duplicates
from pipelines.data.text import text_key
from pipelines.validation import textstats


def _pandas_column(execution_engine, metric_domain_kwargs):
    df, _, accessor = execution_engine.get_compute_domain(metric_domain_kwargs, MetricDomainTypes.COLUMN)
    return df, accessor["column"]


# ----------------------------------------------------------------------------------------------- metrics


class ColumnPiiRate(ColumnAggregateMetricProvider):
    """Share of rows in which ingest's own PII detector (`pipelines.data.pii.detect`: the validators for e-mail,
    phone, cards, IBAN, SSN, national ids, IP, secrets) still finds a span: validation and ingest agree."""

    metric_name = "column.pii_rate"

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        return textstats.detected_pii_rate(df[col].tolist())

    @metric_value(engine=SparkDFExecutionEngine)
    def _spark(cls, execution_engine, metric_domain_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)

        @F.pandas_udf(T.IntegerType())
        def hits(texts):  # the same detector on the executors
            from pipelines.data import pii

            return texts.map(lambda t: int(bool(t) and bool(pii.detect(t))))

        row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(hits(F.col(col))).alias("hits")).collect()[0]
        return float(row["hits"] or 0) / row["n"] if row["n"] else 0.0


class ColumnEnglishShare(ColumnAggregateMetricProvider):
    """Share of rows with at least MIN_STOPWORDS distinct English function words."""

    metric_name = "column.english_share"

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        return textstats.english_share(df[col].tolist())

    @metric_value(engine=SparkDFExecutionEngine)
    def _spark(cls, execution_engine, metric_domain_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        toks = F.array_distinct(F.split(F.lower(F.coalesce(F.col(col), F.lit(""))), r"[^\p{L}\p{N}]+"))
        found = F.size(F.array_intersect(toks, F.array(*[F.lit(w) for w in textstats.EN_STOPWORDS])))
        hit = F.when(found >= textstats.MIN_STOPWORDS, 1).otherwise(0)
        row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(hit).alias("hits")).collect()[0]
        return float(row["hits"] or 0) / row["n"] if row["n"] else 0.0


# The success keys that carry dedup's near-duplicate definition into the suite (and its stored JSON).
NEAR_DUPLICATE_KEYS: tuple[str, ...] = tuple(near_duplicates.NearDuplicateDefinition.model_fields)


def _definition(metric_value_kwargs) -> near_duplicates.NearDuplicateDefinition:
    return near_duplicates.NearDuplicateDefinition(**{k: metric_value_kwargs[k] for k in NEAR_DUPLICATE_KEYS})


class ColumnNearDuplicateRate(ColumnAggregateMetricProvider):
    """Share of rows that are a near-duplicate of another row by dedup's definition (MinHash-LSH candidates
    verified on exact shingle Jaccard, `pipelines.data.near_duplicates`)."""

    metric_name = "column.near_duplicate_rate"
    value_keys = NEAR_DUPLICATE_KEYS

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        return near_duplicates.near_duplicate_rate(df[col].tolist(), _definition(metric_value_kwargs))

    @metric_value(engine=SparkDFExecutionEngine)
    def _spark(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        return near_duplicates.near_duplicate_rate_spark(df, col, _definition(metric_value_kwargs))


class ColumnSplitOverlapRate(ColumnAggregateMetricProvider):
    """Share of non-reference rows (eval/test) sharing a text hash (ngram=0) or a word n-gram with train."""

    metric_name = "column.split_overlap_rate"
    value_keys = ("split_column", "reference_split", "ngram")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        kw = metric_value_kwargs
        return textstats.overlap_rate(
            df[col].tolist(), df[kw["split_column"]].tolist(), reference=kw["reference_split"], ngram=kw["ngram"]
        )

    @metric_value(engine=SparkDFExecutionEngine)
    def _spark(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, **kwargs):
        df, col = _pandas_column(execution_engine, metric_domain_kwargs)
        split_col, ref, n = (metric_value_kwargs[k] for k in ("split_column", "reference_split", "ngram"))

        def keys(text):
            if n <= 0:
                return [text_key(text)]
            return [str(h) for h in textstats.ngram_hashes(text, n)]

        udf = F.udf(keys, T.ArrayType(T.StringType()))
        # Ids first, then explode: in one select Spark may number the exploded rows instead of the input rows.
        keyed = df.select(
            F.monotonically_increasing_id().alias("_rid"),
            (F.col(split_col) == F.lit(ref)).alias("_ref"),
            udf(F.col(col)).alias("_keys"),
        ).cache()
        exploded = keyed.select("_rid", "_ref", F.explode_outer("_keys").alias("_key"))
        try:
            ref_keys = exploded.where("_ref").select("_key").distinct()
            others = exploded.where(~F.col("_ref"))
            total = others.select("_rid").distinct().count()
            hit = others.join(ref_keys, "_key", "left_semi").select("_rid").distinct().count()
        finally:
            keyed.unpersist()
        return hit / total if total else 0.0


# ------------------------------------------------------------------------------------------ expectations


class _RateAtMost(ColumnAggregateExpectation):
    """A column-level rate (0..1) that must not exceed `max_value` (or fall below `min_value`)."""

    min_value: Optional[float] = None
    max_value: Optional[float] = None

    rate_metric: ClassVar[str] = ""
    success_keys: ClassVar[Tuple[str, ...]] = ("min_value", "max_value")
    library_metadata: ClassVar[Dict[str, Any]] = {"maturity": "experimental", "tags": ["text", "llmops"]}

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None, execution_engine=None):
        rate = float(metrics[self.rate_metric])
        ok = (self.min_value is None or rate >= self.min_value) and (self.max_value is None or rate <= self.max_value)
        return {"success": ok, "result": {"observed_value": round(rate, 6)}}


class ExpectColumnPiiRateToBeBelow(_RateAtMost):
    """Rows in which ingest's PII detector still finds PII (e-mails, phones, cards, IBANs, ids, IPs, secrets) stay
    under max_value."""

    rate_metric: ClassVar[str] = "column.pii_rate"
    metric_dependencies: ClassVar[Tuple[str, ...]] = ("column.pii_rate",)


class ExpectColumnEnglishShareToBeAbove(_RateAtMost):
    """At least min_value of the rows read as English (function-word heuristic)."""

    rate_metric: ClassVar[str] = "column.english_share"
    metric_dependencies: ClassVar[Tuple[str, ...]] = ("column.english_share",)


class ExpectColumnNearDuplicateRateToBeBelow(_RateAtMost):
    """Rows that are near-duplicates of another row, by dedup's definition, stay under max_value."""

    # Required, no defaults: the definition is `dedup.near_duplicate` in params.yaml (`by_definition`).
    shingle: int
    num_perm: int
    bands: int
    rows: int
    threshold: float
    max_bucket_size: int

    rate_metric: ClassVar[str] = "column.near_duplicate_rate"
    metric_dependencies: ClassVar[Tuple[str, ...]] = ("column.near_duplicate_rate",)
    success_keys: ClassVar[Tuple[str, ...]] = ("min_value", "max_value", *NEAR_DUPLICATE_KEYS)

    @classmethod
    def by_definition(cls, nd: near_duplicates.NearDuplicateDefinition, **kwargs: Any):
        """The expectation at `nd`'s definition (the validate stage passes `dedup.near_duplicate`)."""
        return cls(**{k: getattr(nd, k) for k in NEAR_DUPLICATE_KEYS}, **kwargs)


class ExpectColumnSplitOverlapRateToBeBelow(_RateAtMost):
    """Decontamination: eval/test rows sharing a text hash (ngram=0) or a long word n-gram with train."""

    split_column: str = "split"
    reference_split: str = "train"
    ngram: int = 0

    rate_metric: ClassVar[str] = "column.split_overlap_rate"
    metric_dependencies: ClassVar[Tuple[str, ...]] = ("column.split_overlap_rate",)
    success_keys: ClassVar[Tuple[str, ...]] = (
        "min_value", "max_value", "split_column", "reference_split", "ngram",
    )


class ExpectColumnLengthQuantilesToBeBetween(ExpectColumnQuantileValuesToBeBetween):
    """The built-in quantile expectation with plain-Python results. GX 1.24's own returns numpy bools
    (`np.all`, numpy comparisons) on Pandas int columns, which its validation-result store then fails to
    serialize (TypeError: Object of type bool is not JSON serializable)."""

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None, execution_engine=None):
        out = super()._validate(metrics, runtime_configuration, execution_engine)
        result = out["result"]
        details = [bool(x) for x in result["details"]["success_details"]]
        values = [None if v is None else float(v) for v in result["observed_value"]["values"]]
        return {
            "success": all(details),
            "result": {
                "observed_value": {"quantiles": list(result["observed_value"]["quantiles"]), "values": values},
                "details": {"success_details": details},
            },
        }


CUSTOM: tuple[type, ...] = (
    ExpectColumnLengthQuantilesToBeBetween,
    ExpectColumnPiiRateToBeBelow,
    ExpectColumnEnglishShareToBeAbove,
    ExpectColumnNearDuplicateRateToBeBelow,
    ExpectColumnSplitOverlapRateToBeBelow,
)
