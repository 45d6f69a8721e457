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
    from pipelines.engines.spark import get_spark
    from pipelines.stages.registry import shared_config

    engines = shared_config("engines", spark={"master": "local[2]", "app_name": "llmops-tests", "shuffle_partitions": 2})
    session = get_spark(engines.spark)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_local():
    from pipelines.engines.ray_engine import init_ray
    from pipelines.stages.registry import shared_config

    ray = init_ray(shared_config("engines", ray={"address": None, "num_cpus": 2}).ray)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The shipped base model converted once per test session (reuses models/base when the demo built it)."""
    built = REPO / "models" / "base"
    if (built / "config.json").exists():
        return built
    from pipelines.stages import prepare_base_model
    from pipelines.stages.registry import stage_config

    out = tmp_path_factory.mktemp("base_model") / "base"
    prepare_base_model.run(stage_config("prepare_base_model", output_dir=str(out), metrics=str(out.parent / "m.json")))
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP server (moto_server) on loopback for the whole session.

    Yields a dict with `endpoint_url` and dummy credentials; tests create their own bucket (uuid-named) through
    boto3 with these settings. Nothing outside 127.0.0.1 is contacted.
    """
    from pipelines.versioning.local_s3 import spawn

    proc, endpoint = spawn()
    settings = {"endpoint_url": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                "region_name": "us-east-1"}
    yield settings
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh, empty bucket on the session's moto_server; returns (bucket_name, boto3 client)."""
    import uuid

    import boto3

    client = boto3.client("s3", **s3_server)
    name = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name, client


@pytest.fixture(scope="session")
def stage_ray(ray_local) -> str:
    """The session's Ray, joined by the e2e workspace's stages run as subprocesses (`dvc repro`, Airflow tasks):
    one Ray for the whole session. Returns its GCS address."""
    import e2e_support

    address = ray_local.get_runtime_context().gcs_address
    e2e_support.STAGE_ENV["LLMOPS_RAY_ADDRESS"] = address
    yield address
    e2e_support.STAGE_ENV.pop("LLMOPS_RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def e2e_reproduced(tmp_path_factory, repo_root, base_model_dir, stage_ray) -> Path:
    """A test-sized copy of the repository after one `dvc repro` (tests/e2e_support.py), shared by the e2e tests.
    LLMOPS_E2E_WORKSPACE names one made before (a developer iterating on the loop test reuses it)."""
    from e2e_support import make_workspace, reproduce

    if reuse := os.environ.get("LLMOPS_E2E_WORKSPACE"):
        return reproduce(Path(reuse))
    return reproduce(make_workspace(tmp_path_factory, repo_root, base_model_dir))


@pytest.fixture(scope="session")
def airflow_loop(e2e_reproduced, tmp_path_factory):
    """The serving API and Airflow (scheduler, dag-processor, triggerer, API server) on the reproduced workspace,
    started once per session for the drift loop and the rollout tests (tests/e2e_support.py serve_and_airflow)."""
    from e2e_support import serve_and_airflow

    yield from serve_and_airflow(e2e_reproduced, tmp_path_factory.mktemp("airflow_home"))


@pytest.fixture(scope="session")
def guard_models(repo_root, tmp_path_factory):
    """train_guard (issue 15) on a slice of the shipped sample (every source kept), once per session: the guard's
    detectors for the guard, audit and serving tests. Returns {dir, report, metrics}."""
    import json

    from e2e_support import slice_guard_sample
    from pipelines.stages import train_guard
    from pipelines.stages.registry import stage_config

    tmp = tmp_path_factory.mktemp("guard")
    sample = tmp / "sample"
    slice_guard_sample(repo_root / "data" / "sample", sample)
    cfg = stage_config("train_guard", source="retrain", sample_root=str(sample), output_dir=str(tmp / "models"),
                       metrics=str(tmp / "guard.json"), report=str(tmp / "guard.md"),
                       cache_dir=str(repo_root / "data/cache/embeddings"))
    report = train_guard.run(cfg)
    return {"dir": tmp / "models", "report": report, "metrics": json.loads((tmp / "guard.json").read_text())}


def pytest_collection_modifyitems(config, items):
    """The tests on the session's Airflow and server (`airflow_loop`) run last, in their collection order: the
    fixture is torn down at the end of the session, and until then its scheduler, DAG processor (re-parsing the
    DAGs every few seconds), triggerer, API server and model server would tax every test that came after them."""
    items.sort(key=lambda item: "airflow_loop" in getattr(item, "fixturenames", ()))  # stable: order kept
