"""The `engines` section of params.yaml: where Spark and Ray run. Values live in params.yaml only."""
from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field

from pipelines.config import StageConfig, parse_section


class SparkConfig(StageConfig):
    master: str  # local[2], spark://host:7077, yarn, k8s://...; LLMOPS_SPARK_MASTER overrides it
    app_name: str
    driver_memory: str
    shuffle_partitions: int = Field(ge=1)
    conf: dict[str, str]  # any spark.* setting
    # JVM flags of the driver (in local mode also the executors), before any spark.driver.extraJavaOptions in conf.
    driver_java_options: str
    # Map an AppCDS archive of Spark's classes into the driver JVM, built once per machine (engines/spark_cds.py).
    class_data_sharing: bool


class RayConfig(StageConfig):
    # None starts (or joins, inside a Ray job) a local instance; "auto" or "ray://host:10001" joins a cluster.
    address: str | None
    num_cpus: int | None
    include_dashboard: bool
    # Keep idle, pre-imported worker processes for Ray Train on a long-lived Ray (pipelines/engines/ray_warm_pool.py):
    # `make ray-up` fills the pool and every finetune run refills it for the next one.
    warm_pool: bool
    warm_pool_keep_alive_s: int = Field(gt=0)


class EnginesConfig(StageConfig):
    spark: SparkConfig
    ray: RayConfig


def engines_from_params(params: Mapping[str, Any]) -> EnginesConfig:
    """The `engines` section of loaded params.yaml (required, like every other section)."""
    return parse_section(params, "engines", EnginesConfig)
