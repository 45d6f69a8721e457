"""The `gx` section of params.yaml: where the Great Expectations file context lives, for every validate stage."""
from __future__ import annotations

from pipelines.config import StageConfig


class GxConfig(StageConfig):
    context_root: str  # the folder holding great_expectations.yml (suites, checkpoints; uncommitted/ ignored)
