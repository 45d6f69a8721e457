"""End to end: the whole lifecycle under `dvc repro`, then the same stages as an Airflow DAG (`airflow dags test`).

Runs in a copy of the repository (tracked files + the shipped sample) with test-sized params, on the real
engines. The base model conversion is shared with the rest of the suite through the `base_model_dir` fixture.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent

# Smaller than the demo so the suite stays within its time budget; the code path is the same.
TEST_PARAMS = {
    ("finetune", "max_steps"): 4,
    ("evaluate", "max_eval_examples"): 16,
    ("evaluate", "max_generation_examples"): 6,
    ("evaluate", "max_new_tokens"): 32,
    ("audit", "max_prompts"): 12,
    ("audit", "max_new_tokens"): 24,
    ("embed", "concurrency"): 1,              # one model actor: one process start instead of two
    ("evaluate_retrieval", "max_questions"): 60,
}


def _env(ws: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        LLMOPS_ROOT=str(ws),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SPARK_LOCAL_IP="127.0.0.1",
    )
    env.update(extra)
    return env


def _run(args: list[str], ws: Path, timeout: int = 1500, **extra: str) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ws, env=_env(ws, **extra), capture_output=True, text=True, timeout=timeout)
    print(f"\n$ {' '.join(args)}  ({time.perf_counter() - started:.1f}s, rc={proc.returncode})")
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:])
    return proc


def _set_params(ws: Path, updates: dict[tuple[str, ...], object]) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _shrink_sample(ws: Path, per_source: int = 60, xquad_articles: int = 8) -> None:
    """Cut the shipped sample to a test-sized one (compute cost is per document: embedding 840 documents alone
    takes minutes on a 2-core CPU) while keeping what the stages must find: exact duplicates (a verbatim copy
    and a case/whitespace-noisy copy) and XQuAD paragraphs whose questions the retrieval evaluation asks."""
    raw = ws / "data" / "sample" / "raw"
    roleplay = json.loads((raw / "gpteacher_roleplay.json").read_text())[:per_source]
    roleplay += [dict(r) for r in roleplay[:2]]
    codegen = json.loads((raw / "gpteacher_codegen.json").read_text())[:per_source]
    codegen.append({**codegen[0], "instruction": "  " + codegen[0]["instruction"].upper() + "  "})
    (raw / "gpteacher_roleplay.json").write_text(json.dumps(roleplay, indent=1))
    (raw / "gpteacher_codegen.json").write_text(json.dumps(codegen, indent=1))
    xquad_path = ws / "data" / "sample" / "rag" / "xquad.en.json"
    xquad = json.loads(xquad_path.read_text())
    xquad["data"] = xquad["data"][:xquad_articles]
    xquad_path.write_text(json.dumps(xquad))
    titles = {a["title"] for a in xquad["data"]}
    lines = (raw / "xquad_en_paragraphs.jsonl").read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["title"] in titles]
    (raw / "xquad_en_paragraphs.jsonl").write_text("\n".join(kept) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo_root, base_model_dir) -> Path:
    ws = tmp_path_factory.mktemp("e2e") / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=repo_root, capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        src = repo_root / rel
        if src.is_file():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ws / rel)
    _shrink_sample(ws)
    _set_params(ws, {**TEST_PARAMS, ("prepare_base_model", "model_path"): str(base_model_dir)})
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(args, cwd=ws, check=True)
    return ws


@pytest.fixture(scope="module")
def reproduced(workspace) -> Path:
    proc = _run([str(VENV_BIN / "dvc"), "repro"], workspace)
    assert proc.returncode == 0, "dvc repro failed"
    return workspace


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


def test_airflow_dag_runs_the_dvc_stages(reproduced, tmp_path):
    ws = reproduced
    # A changed gate threshold makes exactly gate and promote stale: Airflow must run them, DVC skips the rest.
    _set_params(ws, {("gate", "floors", "max_perplexity"): 1.0e6})
    decision_before = (ws / "reports/gate_decision.json").stat().st_mtime
    airflow_env = {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ws / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ws / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ws / "plugins"),
    }
    airflow = str(VENV_BIN / "airflow")
    assert _run([airflow, "db", "migrate"], ws, timeout=600, **airflow_env).returncode == 0
    proc = _run([airflow, "dags", "test", "llmops_lifecycle"], ws, timeout=1200, **airflow_env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "failed" not in log.lower().split("dagrun finished")[-1] or "state=success" in log.lower()
    assert (ws / "reports/gate_decision.json").stat().st_mtime > decision_before
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert lock["stages"]["gate"]["params"]["params.yaml"]["gate"]["floors"]["max_perplexity"] == 1.0e6
    status = _run([str(VENV_BIN / "dvc"), "status"], ws)
    assert "up to date" in status.stdout.lower(), status.stdout
