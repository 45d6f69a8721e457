"""Shared, expensive fixtures: one Spark session and one Ray instance for the whole test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"../shared/data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark():
    from pipelines.engines.config import SparkConfig
    from pipelines.engines.spark import get_spark

    session = get_spark(SparkConfig(master="local[2]", app_name="llmops-tests", shuffle_partitions=2))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_local():
    from pipelines.engines.config import RayConfig
    from pipelines.engines.ray_engine import init_ray

    ray = init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The shipped base model converted once per test session (reuses models/base when the demo built it)."""
    built = REPO / "models" / "base"
    if (built / "config.json").exists():
        return built
    from pipelines.stages import prepare_base_model

    out = tmp_path_factory.mktemp("base_model") / "base"
    prepare_base_model.run(prepare_base_model.Config(output_dir=str(out), metrics=str(out.parent / "m.json")))
    return out
