"""The parallel run's groups (tests/conftest.py `ModuleGroupScheduling`): what must share one process goes to one
pytest-xdist worker whole."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import DURATIONS, E2E_MODULES, SHARED_AIRFLOW_HOME, _module_of_nodeid, module_group

TESTS = Path(__file__).resolve().parent


def test_the_e2e_and_in_process_airflow_modules_each_go_to_one_worker():
    assert {module_group(_module_of_nodeid(f"tests/{m}.py::test_x")) for m in E2E_MODULES} == {"e2e"}
    assert {module_group(m) for m in SHARED_AIRFLOW_HOME} == {"airflow"}
    # a parametrized id may hold '@' and '::' (xdist's loadgroup parsed ids for '@'; this scope is the module)
    assert _module_of_nodeid("tests/test_infra.py::test_image_pinning[a@sha256:x::y]") == "test_infra"
    assert module_group(_module_of_nodeid("tests/test_io.py::test_x")) == "test_io"


def test_the_listed_modules_exist_and_the_durations_name_real_modules():
    modules = {p.stem for p in TESTS.glob("test_*.py")}
    assert E2E_MODULES <= modules and SHARED_AIRFLOW_HOME <= modules
    assert set(json.loads(DURATIONS.read_text())) <= modules
