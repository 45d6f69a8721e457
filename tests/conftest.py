"""Shared, expensive fixtures: one Spark session and one Ray instance for the whole test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# A pytest-xdist worker runs under execnet, whose __main__ has neither __spec__ nor __file__: pyspark.sql.connect
# then takes the process for a doctest run and calls sys.exit(0) on import (GX imports it), failing the test.
_main = sys.modules.get("__main__")
if os.environ.get("PYTEST_XDIST_WORKER") and _main is not None and getattr(_main, "__spec__", None) is None \
        and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"


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


def built_once(tmp_path_factory, name: str) -> tuple[Path, FileLock]:
    """Where a session fixture's output goes so that it is built once per run, not once per pytest-xdist worker
    (xdist's documented pattern: the workers' common temp dir and a file lock). Returns (dir, lock)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / name, FileLock(str(root / f"{name}.lock"))


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The shipped base model converted once per test run (reuses models/base when the demo built it)."""
    built = REPO / "models" / "base"
    if (built / "config.json").exists():
        return built
    from pipelines.stages import prepare_base_model
    from pipelines.stages.registry import stage_config

    root, lock = built_once(tmp_path_factory, "base_model")
    out = root / "base"
    with lock:
        if not (out / "config.json").exists():
            prepare_base_model.run(stage_config("prepare_base_model", output_dir=str(out),
                                                metrics=str(root / "m.json")))
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
    detectors for the guard, audit and serving tests, built once per run. Returns {dir, metrics}."""
    import json

    from e2e_support import slice_guard_sample
    from pipelines.stages import train_guard
    from pipelines.stages.registry import stage_config

    tmp, lock = built_once(tmp_path_factory, "guard")
    with lock:
        if not (tmp / "guard.json").exists():
            sample = tmp / "sample"
            slice_guard_sample(repo_root / "data" / "sample", sample)
            cfg = stage_config("train_guard", source="retrain", sample_root=str(sample),
                               output_dir=str(tmp / "models"), metrics=str(tmp / "guard.json"),
                               report=str(tmp / "guard.md"), cache_dir=str(repo_root / "data/cache/embeddings"))
            train_guard.run(cfg)
    return {"dir": tmp / "models", "metrics": json.loads((tmp / "guard.json").read_text())}


# ------------------------------------------------------------------ parallel runs (pytest -n N)
# `make test` runs two pytest-xdist workers on machines with 4 cores or more (on 2 cores one process is faster:
# docs/development.md has the measurement). `ModuleGroupScheduling` sends each group below to one worker whole:
# - e2e: the modules on the e2e workspace and its Airflow (one `dvc repro`, one Airflow, one server per run);
# - airflow: the modules that import Airflow in-process share the AIRFLOW_HOME that `make test` exports (one
#   SQLite metadata DB);
# - every other module is a group of its own (its module fixtures are built once).
# The groups go out longest first (tests/durations.json: seconds per module from a serial CI run; a module not in it
# counts 0), so the last group to start is a short one. Inside a group the collection order is kept, with the tests
# on the session's Airflow last: their fixture stays up until the worker's session ends.
# (Not xdist's own `--dist loadgroup`: with pytest 9 its `xdist_group` marks never reach the scheduler, because it
# renames `item._nodeid`, which pytest 9 no longer reads; measured: both workers built the e2e workspace.)
E2E_MODULES = {"test_e2e", "test_e2e_loop", "test_e2e_rollout", "test_mcp_airflow"}
E2E_FIXTURES = {"e2e_reproduced", "airflow_loop"}
SHARED_AIRFLOW_HOME = {"test_dag_integrity", "test_rollout_airflow", "test_maturity_rollout", "test_mcp", "test_docs",
                       "test_infra"}
DURATIONS = REPO / "tests" / "durations.json"


def module_group(module: str) -> str:
    return "e2e" if module in E2E_MODULES else "airflow" if module in SHARED_AIRFLOW_HOME else module


def _module_of_nodeid(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: `-p no:xdist` runs without it
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        """LoadScope scheduling with `module_group` as the scope: a group's tests all go to one worker."""

        def _split_scope(self, nodeid: str) -> str:
            return module_group(_module_of_nodeid(nodeid))

    return ModuleGroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The tests on the session's Airflow and server (`airflow_loop`) run last, in their collection order: the
    fixture is torn down at the end of the session, and until then its scheduler, DAG processor (re-parsing the
    DAGs every few seconds), triggerer, API server and model server would tax every test that came after them.
    On an xdist worker (which collects for the scheduler) the groups above are also ordered longest first."""
    import json

    module_of = {item: item.module.__name__.rsplit(".", 1)[-1] for item in items}
    strays = sorted({m for item, m in module_of.items()
                     if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) and m not in E2E_MODULES})
    if strays:  # a second worker would build a second e2e workspace and Airflow
        raise pytest.UsageError(f"tests/conftest.py: add {strays} to E2E_MODULES (they use {sorted(E2E_FIXTURES)})")
    last = {item: "airflow_loop" in getattr(item, "fixturenames", ()) for item in items}
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=last.__getitem__)  # stable: order kept
        return
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    weight: dict[str, float] = {}
    for module in set(module_of.values()):
        group = module_group(module)
        weight[group] = weight.get(group, 0.0) + float(seconds.get(module, 0.0))
    items.sort(key=lambda item: (-weight[module_group(module_of[item])], module_group(module_of[item]), last[item]))
