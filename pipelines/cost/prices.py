"""The price table: `cost` in params.yaml (USD; every cost figure of the project is named `*_usd`).

Written once: `evaluate.cost` and `serve.cost` are YAML aliases of it (`cost: &prices ...`, `cost: *prices`), so the
stage meter, evaluate's cost per 1k tokens and serving's per-request cost all use the same prices.
"""
from __future__ import annotations

from pydantic import Field

from pipelines.config import StageConfig

SECTION = "cost"


class PriceTable(StageConfig):
    price_per_cpu_hour: float = Field(ge=0)  # USD per CPU core-hour (CPU-seconds x price / 3600)
    price_per_gpu_hour: float = Field(ge=0)  # USD per GPU-hour (GPU-seconds x price / 3600)

    def cost(self, cpu_seconds: float, gpu_seconds: float = 0.0) -> float:
        """USD for `cpu_seconds` core-seconds and `gpu_seconds` GPU-seconds."""
        return cpu_seconds / 3600.0 * self.price_per_cpu_hour + gpu_seconds / 3600.0 * self.price_per_gpu_hour
