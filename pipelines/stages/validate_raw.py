"""validate_raw: the ingested corpus must meet the `raw_corpus` suite before dedup runs.

Schema, required fields present, `source` and `licence` non-empty on every row and from the declared sets.
Same mechanics as `validate` (suite rebuilt from params, Pandas or Spark batch, warnings via GX severity).
"""
from __future__ import annotations

from pydantic import Field

from pipelines.data.landing import allowed_with_landed
from pipelines.engines.config import EnginesConfig
from pipelines.schema import CORPUS_COLUMNS, REQUIRED_NON_NULL
from pipelines.validation.context import GxConfig
from pipelines.validation.gate import GateConfig, ValidationReport, run_gate
from pipelines.validation.suites import load_parquet, preference_expectations, with_severity

SECTION = "validate_raw"


class Config(GateConfig):
    input_dir: str
    min_rows: int = Field(ge=0)
    kinds: list[str]
    sources: list[str] | None  # allowed sources; null: any
    licences: list[str] | None  # allowed licences; null: any
    landed_dir: str | None  # approved landing sources (and their licences) are allowed too; null: none


def raw_expectations(cfg: Config) -> list:
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(CORPUS_COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in (*REQUIRED_NON_NULL, "kind")),
        # present AND not blank: an empty string is as unaccountable as a null
        gxe.ExpectColumnValueLengthsToBeBetween(column="source", min_value=1),
        gxe.ExpectColumnValueLengthsToBeBetween(column="licence", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(cfg.kinds)),
        *preference_expectations(),
    ]
    if cfg.sources is not None:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(
            column="source", value_set=allowed_with_landed(cfg.sources, cfg.landed_dir, "name")))
    if cfg.licences is not None:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(
            column="licence", value_set=allowed_with_landed(cfg.licences, cfg.landed_dir, "licence")))
    return with_severity(expectations, cfg.non_blocking)


def run(cfg: Config, gx: GxConfig, engines: EnginesConfig | None = None, *, spark=None) -> ValidationReport:
    """`spark`: a session to reuse (tests share theirs); else one from `engines.spark` when engine is spark."""
    return run_gate(cfg, gx, load=load_parquet(cfg.input_dir, engines, spark),
                    expectations=lambda: raw_expectations(cfg), source=cfg.input_dir)
