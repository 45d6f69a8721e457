from __future__ import annotations

from pydantic import Field

from pipelines.config import StageConfig


class SparkConfig(StageConfig):
    master: str = "local[2]"
    app_name: str = "llmops"
    driver_memory: str = "2g"
    shuffle_partitions: int = 4
    conf: dict[str, str] = Field(default_factory=dict)


class RayConfig(StageConfig):
    # None starts (or joins, inside a Ray job) a local instance; "auto" or "ray://host:10001" joins a cluster.
    address: str | None = None
    num_cpus: int | None = None
    include_dashboard: bool = False
    # Keep idle, pre-imported worker processes for Ray Train on a long-lived Ray (pipelines/engines/ray_warm_pool.py):
    # `make ray-up` fills the pool and every finetune run refills it for the next one.
    warm_pool: bool = True
    warm_pool_keep_alive_s: int = Field(3600, gt=0)


class EnginesConfig(StageConfig):
    spark: SparkConfig = SparkConfig()
    ray: RayConfig = RayConfig()


def engines_from_params(params: dict) -> EnginesConfig:
    """The `engines` section of loaded params.yaml, defaults when it is absent."""
    from pipelines.config import parse_section

    return parse_section(params, "engines", EnginesConfig) if "engines" in params else EnginesConfig()
