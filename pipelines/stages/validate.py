"""validate: the curated corpus must meet its Great Expectations suite, or the pipeline stops here.

The suite `curated_corpus` lives in the GX file context under `great_expectations/` (committed JSON), but its
thresholds are params, so every run rebuilds suite, validation definition and checkpoint from this file and
params.yaml and saves them (stable ids: unchanged params leave the committed files unchanged). The corpus is
handed to the checkpoint as a Pandas or Spark dataframe (`engine`) through batch_parameters; Data Docs are rebuilt
by the checkpoint. Expectation types listed in `non_blocking` get GX's severity "warning": reported, not fatal.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from pipelines.config import StageConfig
from pipelines.engines.config import EnginesConfig
from pipelines.schema import CORPUS_COLUMNS, KINDS, REQUIRED_NON_NULL
from pipelines.validation.context import GxConfig
from pipelines.validation.suites import load_parquet, with_severity

SECTION = "validate"


class Config(StageConfig):
    input_dir: str = "data/curated/corpus"
    suite: str = "curated_corpus"
    engine: str = Field("pandas", pattern="^(pandas|spark)$")  # spark: the same suite on a Spark DataFrame
    min_rows: int = Field(1, ge=0)
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(20000, ge=1)
    # n_chars quantiles -> [low, high] the quantile must fall in (distribution drift of lengths)
    length_quantiles: dict[float, list[float]] = Field(
        default_factory=lambda: {0.05: [20, 1000], 0.5: [100, 5000], 0.95: [200, 20000]}
    )
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    sources: list[str] | None = None  # allowed sources; null: any
    max_near_duplicate_rate: float = Field(0.05, ge=0, le=1)
    near_duplicate: dict[str, int] = Field(default_factory=lambda: {"shingle": 5, "num_perm": 32, "bands": 8})
    max_pii_rate: float = Field(0.01, ge=0, le=1)
    min_english_share: float = Field(0.8, ge=0, le=1)
    non_blocking: list[str] = Field(default_factory=list)  # expectation types reported as warnings only
    results_dir: str = "reports/validation"
    metrics: str = "metrics/validate.json"

    @model_validator(mode="after")
    def _bounds(self) -> "Config":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars})")
        for q, bounds in self.length_quantiles.items():
            if not 0 <= q <= 1 or len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ValueError(f"length_quantiles: {q}: {bounds} must be a quantile in [0, 1] -> [low, high]")
        return self



def corpus_expectations(cfg: Config) -> list:
    """The curated-corpus contract as GX expectations (GX imported lazily by the caller's run())."""
    import great_expectations.expectations as gxe

    from pipelines.validation import expectations as text

    quantiles = sorted(cfg.length_quantiles)
    expectations = [
        # A set, not an ordered list: Spark may reorder columns on write without changing the data.
        gxe.ExpectTableColumnsToMatchSet(column_set=list(CORPUS_COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in REQUIRED_NON_NULL),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
        gxe.ExpectColumnValuesToBeUnique(column="text"),  # no exact duplicates left after dedup
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(cfg.kinds)),
        gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=cfg.min_chars, max_value=cfg.max_chars),
        # n_chars is computed upstream; checking the text itself catches a stale or wrong n_chars too.
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=cfg.min_chars, max_value=cfg.max_chars),
        text.ExpectColumnLengthQuantilesToBeBetween(
            column="n_chars",
            quantile_ranges={"quantiles": quantiles, "value_ranges": [list(cfg.length_quantiles[q]) for q in quantiles]},
        ),
        text.ExpectColumnNearDuplicateRateToBeBelow(
            column="text", max_value=cfg.max_near_duplicate_rate, **cfg.near_duplicate
        ),
        text.ExpectColumnPiiRateToBeBelow(column="text", max_value=cfg.max_pii_rate),
        text.ExpectColumnEnglishShareToBeAbove(column="text", min_value=cfg.min_english_share),
    ]
    if cfg.sources is not None:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(cfg.sources)))
    return with_severity(expectations, cfg.non_blocking)



def run(cfg: Config, gx: GxConfig, engines: EnginesConfig | None = None, *, spark=None) -> dict:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    from pipelines.validation.gate import run_gate  # heavy: imports great_expectations

    return run_gate(
        suite=cfg.suite, gx_root=gx.context_root, engine=cfg.engine, load=load_parquet(cfg.input_dir, engines, spark),
        expectations=lambda: corpus_expectations(cfg), results_dir=cfg.results_dir, metrics=cfg.metrics,
        source=cfg.input_dir,
    )
