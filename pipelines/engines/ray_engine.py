"""Connect to Ray from `engines.ray` in params.yaml: a local instance by default, a cluster by address."""
from __future__ import annotations

import os

from pipelines.engines.config import RayConfig


def init_ray(cfg: RayConfig | None = None):
    import ray  # heavy: imported only when a stage needs Ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return ray
    address = os.environ.get("LLMOPS_RAY_ADDRESS", cfg.address)
    kwargs: dict = {
        "address": address,
        "include_dashboard": cfg.include_dashboard,
        "ignore_reinit_error": True,
        "log_to_driver": True,
        "configure_logging": False,
    }
    if address is None:
        kwargs["num_cpus"] = cfg.num_cpus
    ray.init(**kwargs)
    return ray
