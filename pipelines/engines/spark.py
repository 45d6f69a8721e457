"""One Spark session per process, built from `engines.spark` in params.yaml."""
from __future__ import annotations

import os
import sys

from pipelines.engines.config import SparkConfig


def get_spark(cfg: SparkConfig | None = None):
    from pyspark.sql import SparkSession  # heavy: imported only when a stage needs Spark

    cfg = cfg or SparkConfig()
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
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
