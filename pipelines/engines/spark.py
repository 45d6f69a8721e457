"""One Spark session per process, built from `engines.spark` in params.yaml, and the small helpers every Spark
stage shares (the session to run on, paths Spark resolves the same everywhere, grouped counts)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipelines.engines import spark_cds
from pipelines.engines.config import EnginesConfig, SparkConfig


def get_spark(cfg: SparkConfig):
    from pyspark.sql import SparkSession  # heavy: imported only when a stage needs Spark

    master = os.environ.get("LLMOPS_SPARK_MASTER", cfg.master)
    # Python workers must run the interpreter that has this project's packages (not the system python3).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        # Bind the driver to loopback: this machine's only reachable network, and no firewall prompts on laptops.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    from pyspark import SparkContext

    conf = dict(cfg.conf)
    # JVM flags only matter when this call starts the driver JVM: with one running, no archive is built or looked up
    starts_jvm = SparkContext._active_spark_context is None
    java_options = " ".join(filter(None, (
        spark_cds.java_options(spark_cds.ensure_archive()) if cfg.class_data_sharing and starts_jvm else "",
        cfg.driver_java_options, conf.pop("spark.driver.extraJavaOptions", ""))))
    if java_options:  # read when spark-submit starts the driver JVM: a session already running keeps its own
        builder = builder.config("spark.driver.extraJavaOptions", java_options)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def session(engines: EnginesConfig | None, spark=None):
    """The session a stage runs on: one handed in (tests share theirs), else one built from `engines.spark`."""
    if spark is not None:
        return spark
    if engines is None:
        raise ValueError("a Spark stage needs either a session or the engines section of params.yaml")
    return get_spark(engines.spark)


def spark_path(path: str | Path) -> str:
    """Local paths are made absolute (Spark resolves relative ones against its own working dir); URIs pass as is."""
    path = str(path)
    return path if "://" in path else str(Path(path).resolve())


def count_by(df, *cols: str) -> dict[tuple, int]:
    return {tuple(r[c] for c in cols): r["count"] for r in df.groupBy(*cols).count().collect()}
