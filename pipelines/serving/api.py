"""Compatibility entry point: the API lives in pipelines.serving.app (create_app) and .config (ServeConfig)."""
from __future__ import annotations

from pipelines.serving.app import create_app
from pipelines.serving.config import ServeConfig
from pipelines.serving.reload import NoChampion

__all__ = ["NoChampion", "ServeConfig", "create_app"]
