"""validate: the curated corpus must meet its Great Expectations suite, or the pipeline stops here.

The suite `curated_corpus` lives in the GX file context under `great_expectations/` (committed JSON), but its
thresholds are params, so every run rebuilds suite, validation definition and checkpoint from this file and
params.yaml and saves them (stable ids: unchanged params leave the committed files unchanged). The corpus is
handed to the checkpoint as a Pandas or Spark dataframe (`engine`) through batch_parameters; Data Docs are rebuilt
by the checkpoint. Expectation types listed in `non_blocking` get GX's severity "warning": reported, not fatal.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from pipelines.data.landing import allowed_with_landed
from pipelines.engines.config import EnginesConfig
from pipelines.schema import CORPUS_COLUMNS, REQUIRED_NON_NULL
from pipelines.data.near_duplicates import NearDuplicate
from pipelines.validation.context import GxConfig
from pipelines.validation.gate import GateConfig, ValidationReport, run_gate
from pipelines.validation.suites import load_parquet, preference_expectations, with_severity

SECTION = "validate"


class Config(GateConfig):
    input_dir: str
    min_rows: int = Field(ge=0)
    min_chars: int = Field(ge=0)
    max_chars: int = Field(ge=1)
    # n_chars quantiles -> [low, high] the quantile must fall in (distribution drift of lengths)
    length_quantiles: dict[float, list[float]]
    kinds: list[str]
    sources: list[str] | None  # allowed sources; null: any
    landed_dir: str | None  # approved landing sources are allowed too; null: none
    max_near_duplicate_rate: float = Field(ge=0, le=1)
    max_pii_rate: float = Field(ge=0, le=1)
    min_english_share: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> "Config":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars})")
        for q, bounds in self.length_quantiles.items():
            if not 0 <= q <= 1 or len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ValueError(f"length_quantiles: {q}: {bounds} must be a quantile in [0, 1] -> [low, high]")
        return self


def corpus_expectations(cfg: Config, near_duplicate: NearDuplicate) -> list:
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
        # At dedup's definition (`dedup.near_duplicate`): what dedup leaves has none.
        text.ExpectColumnNearDuplicateRateToBeBelow.by_definition(
            near_duplicate, column="text", max_value=cfg.max_near_duplicate_rate
        ),
        text.ExpectColumnPiiRateToBeBelow(column="text", max_value=cfg.max_pii_rate),
        text.ExpectColumnEnglishShareToBeAbove(column="text", min_value=cfg.min_english_share),
        *preference_expectations(),
    ]
    if cfg.sources is not None:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(
            column="source", value_set=allowed_with_landed(cfg.sources, cfg.landed_dir, "name")))
    return with_severity(expectations, cfg.non_blocking)


def run(cfg: Config, gx: GxConfig, near_duplicate: NearDuplicate, engines: EnginesConfig | None = None, *,
        spark=None) -> ValidationReport:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    return run_gate(cfg, gx, load=load_parquet(cfg.input_dir, engines, spark),
                    expectations=lambda: corpus_expectations(cfg, near_duplicate), source=cfg.input_dir)
