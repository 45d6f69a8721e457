"""End to end: the whole lifecycle under `dvc repro` in a copy of the repository with test-sized params, on the
real engines (tests/e2e_support.py). The same workspace then runs the drift-to-retrain loop on a real Airflow
scheduler (tests/test_e2e_loop.py)."""
from __future__ import annotations

import json

import pytest
import yaml

from e2e_support import VENV_BIN, run as _run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test carries the reproduction


@pytest.fixture(scope="module")
def reproduced(e2e_reproduced):
    return e2e_reproduced

def test_dvc_repro_runs_every_stage_and_records_a_gate_decision(reproduced):
    ws = reproduced
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    dvc_stages = list(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    assert sorted(lock["stages"]) == sorted(dvc_stages)

    ingest = json.loads((ws / "metrics/ingest.json").read_text())["total"]
    assert ingest["in"] == ingest["out"] + ingest["rejected"]
    dedup = json.loads((ws / "metrics/dedup.json").read_text())
    assert dedup["out"] < dedup["in"], "the sample holds deliberate duplicates"

    decision = json.loads((ws / "reports/gate_decision.json").read_text())
    assert decision["decision"] in {"promote", "reject"}
    assert (ws / "models/candidate/adapter_config.json").exists()
    assert (ws / "data/embeddings/index.faiss").exists()
    summary = _run([str(VENV_BIN / "llmops"), "summary"], ws)
    assert summary.returncode == 0 and "Gate decision" in summary.stdout
    print(summary.stdout)


def test_second_repro_changes_nothing(reproduced):
    proc = _run([str(VENV_BIN / "dvc"), "repro"], reproduced)
    assert proc.returncode == 0
    assert "Running stage" not in proc.stdout
    status = _run([str(VENV_BIN / "dvc"), "status"], reproduced)
    assert "up to date" in status.stdout.lower(), status.stdout


def test_editing_a_helper_module_makes_exactly_its_stages_stale(reproduced):
    """Code deps come from the imports (`llmops dvc-deps`): a change to a helper module that several stages import
    makes `dvc status` report exactly those stages, and no other."""
    from pipelines.orchestration.code_deps import stage_code_deps
    from pipelines.stages.registry import STAGES

    ws = reproduced
    helper = ws / "pipelines" / "data" / "text.py"
    users = {stage for stage, files in stage_code_deps(STAGES, ws).items() if "pipelines/data/text.py" in files}
    assert {"dedup", "validate", "validate_splits"} <= users
    original = helper.read_text()
    try:
        helper.write_text(original + "\n# an edit\n")
        status = _run([str(VENV_BIN / "dvc"), "status", "--json"], ws)
        assert status.returncode == 0
        stale = set(json.loads(status.stdout or "{}"))
    finally:
        helper.write_text(original)
    # Downstream stages do not show before their inputs change: DVC reports the stages whose own deps changed.
    assert stale == users, f"dvc status: {sorted(stale)}; stages importing data/text.py: {sorted(users)}"
    assert "up to date" in _run([str(VENV_BIN / "dvc"), "status"], ws).stdout.lower()
