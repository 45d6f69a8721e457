"""What every validate stage shares before GX runs: batch loaders and GX severities. Light: no GX import."""
from __future__ import annotations

from typing import Any, Callable

from pipelines.engines.config import EnginesConfig
from pipelines.schema import read_corpus


def with_severity(expectations: list, non_blocking: list[str]) -> list:
    """GX 1.x native severity: listed expectation types become warnings (non-blocking), the rest stay critical."""
    for e in expectations:
        if e.expectation_type in non_blocking:
            e.severity = "warning"
    return expectations


def preference_expectations() -> list:
    """Preference rows (issue 31) are whole pairs, other rows have none: `rejected` is non-null iff kind is
    preference, and a pair's chosen answer (`response`) differs from its rejected one."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="rejected", row_condition='col("kind")=="preference"',
                                          condition_parser="great_expectations"),
        gxe.ExpectColumnValuesToBeNull(column="rejected", row_condition='col("kind")!="preference"',
                                       condition_parser="great_expectations"),
        # rows with a null rejected (instruction, document) are skipped (ignore_row_if: any_value_is_missing)
        gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord(column_list=["response", "rejected"]),
    ]


def load_parquet(path: str, engines: EnginesConfig | None, spark=None) -> Callable[[str], Any]:
    """Loader for the gate: pandas (pyarrow) or a Spark DataFrame read by the session from `engines.spark`."""

    def load(engine: str):
        if engine == "pandas":
            return read_corpus(path)
        from pipelines.engines.spark import session, spark_path

        read_corpus(path, columns=["doc_id"])  # same 'not found' message as the pandas path
        return session(engines, spark).read.parquet(spark_path(path))

    return load


def load_frame(df, engines: EnginesConfig | None, spark=None) -> Callable[[str], Any]:
    """Loader for a batch built in pandas: as is, or handed to Spark when the stage's engine is spark."""

    def load(engine: str):
        if engine == "pandas":
            return df
        from pipelines.engines.spark import session

        return session(engines, spark).createDataFrame(df)

    return load
