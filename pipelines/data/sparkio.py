"""Small Spark helpers shared by the Spark data stages."""
from __future__ import annotations

from pathlib import Path

from pipelines.engines.config import EnginesConfig


def session(engines: EnginesConfig | None, spark=None):
    """The session a stage runs on: one handed in (tests share theirs), else one built from `engines.spark`."""
    if spark is not None:
        return spark
    from pipelines.engines.spark import get_spark

    return get_spark((engines or EnginesConfig()).spark)


def spark_path(path: str | Path) -> str:
    """Local paths are made absolute (Spark resolves relative ones against its own working dir); URIs pass as is."""
    path = str(path)
    return path if "://" in path else str(Path(path).resolve())


def count_by(df, *cols: str) -> dict[tuple, int]:
    return {tuple(r[c] for c in cols): r["count"] for r in df.groupBy(*cols).count().collect()}
