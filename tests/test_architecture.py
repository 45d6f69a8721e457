"""The ground floor holds: the import graph respects the floors, and dvc.yaml's code deps are the real imports."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipelines.orchestration import code_deps
from pipelines.orchestration.imports import (
    cycles,
    discover,
    floor_of,
    floor_violations,
    import_graph,
    render_floors,
)
from pipelines.stages.registry import SHARED_SECTIONS, STAGES, shared_sections_of, stage_module

LLMOPS = str(Path(sys.executable).parent / "llmops")


def _params_by_stage():
    return {name: [stage_module(name).SECTION, *(SHARED_SECTIONS[k][0] for k in shared_sections_of(stage_module(name)))]
            for name in STAGES}


# --- floors --------------------------------------------------------------------------------------------------


def test_import_graph_respects_the_floors_and_has_no_cycle(repo_root):
    _, graph = import_graph(repo_root)
    print("\n" + render_floors(graph))
    violations = floor_violations(graph)
    found = cycles(graph)
    print(f"upward imports: {len(violations)}; cycles: {len(found)}")
    assert not violations, "imports from a floor above:\n" + "\n".join(map(str, violations))
    assert not found, f"import cycles: {found}"


def test_every_module_is_on_a_floor(repo_root):
    for name in discover(repo_root):
        floor_of(name)  # raises for a package nobody placed


def test_floor_check_catches_upward_imports_cycles_and_stage_to_stage_imports():
    graph = {
        "pipelines.data.text": {"pipelines.stages.dedup"},  # domain -> stages: upwards
        "pipelines.stages.dedup": {"pipelines.data.text"},
        "pipelines.stages.validate": {"pipelines.stages.dedup"},  # stage -> stage
        "pipelines.models.lm": {"pipelines.training.sft"},  # domain packages in a cycle
        "pipelines.training.sft": {"pipelines.models.registry"},
        "pipelines.models.registry": set(),
    }
    why = {(v.importer, v.imported) for v in floor_violations(graph)}
    assert ("pipelines.data.text", "pipelines.stages.dedup") in why
    assert ("pipelines.stages.validate", "pipelines.stages.dedup") in why
    found = cycles(graph)
    assert ["pipelines.models", "pipelines.training"] in found
    assert ["pipelines.data.text", "pipelines.stages.dedup"] in found


def test_lazy_and_type_checking_imports_count_for_floors(tmp_path):
    pkg = tmp_path / "pipelines"
    (pkg / "data").mkdir(parents=True)
    (pkg / "stages").mkdir()
    for init in (pkg / "__init__.py", pkg / "data" / "__init__.py", pkg / "stages" / "__init__.py"):
        init.write_text("")
    (pkg / "stages" / "ingest.py").write_text("X = 1\n")
    (pkg / "data" / "lazy.py").write_text("def f():\n    from pipelines.stages import ingest\n")
    (pkg / "data" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipelines.stages.ingest import X\n")
    _, graph = import_graph(tmp_path)
    bad = {v.importer for v in floor_violations(graph)}
    assert bad == {"pipelines.data.lazy", "pipelines.data.typed"}
    _, running = import_graph(tmp_path, type_checking=False)  # what DVC deps count: only imports that run
    assert "pipelines.stages.ingest" not in running["pipelines.data.typed"]
    assert "pipelines.stages.ingest" in running["pipelines.data.lazy"]


# --- DVC code deps -------------------------------------------------------------------------------------------


def test_dvc_yaml_code_deps_are_the_stages_real_imports(repo_root):
    expected = code_deps.stage_code_deps(STAGES, repo_root)
    drifts = code_deps.check(repo_root / "dvc.yaml", expected, _params_by_stage())
    assert not drifts, "dvc.yaml drifted from the imports (run `llmops dvc-deps --write`):\n" + "\n".join(map(str, drifts))
    # The deps are exactly what runs: the stage's own module, shared contracts, and its domain code.
    assert "pipelines/stages/dedup.py" in expected["dedup"] and "pipelines/config.py" in expected["dedup"]
    assert not any(f.startswith("pipelines/stages/") and f != "pipelines/stages/split.py" and
                   not f.endswith("__init__.py") for f in expected["split"])


def _copy_repo(repo_root: Path, dest: Path) -> Path:
    shutil.copytree(repo_root / "pipelines", dest / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(repo_root / name, dest / name)
    return dest


def _remove_dep(dvc_yaml: Path, stage: str, dep: str) -> None:
    yaml, doc = code_deps._load_dvc_yaml(dvc_yaml)
    deps = doc["stages"][stage]["deps"]
    deps.remove(dep)
    with open(dvc_yaml, "w") as fh:
        yaml.dump(doc, fh)


def test_a_planted_drift_is_caught_and_written_back(repo_root, tmp_path):
    ws = _copy_repo(repo_root, tmp_path)
    expected = code_deps.stage_code_deps(STAGES, ws)
    dropped = next(f for f in expected["validate"] if f.startswith("pipelines/data/"))
    _remove_dep(ws / "dvc.yaml", "validate", dropped)
    drifts = code_deps.check(ws / "dvc.yaml", expected, _params_by_stage())
    assert [(d.stage, d.missing) for d in drifts] == [("validate", [dropped])]

    proc = subprocess.run([LLMOPS, "dvc-deps", "--check", "--root", str(ws)], capture_output=True, text=True)
    assert proc.returncode == 1 and f"stage 'validate': missing {dropped}" in proc.stderr

    assert code_deps.write(ws / "dvc.yaml", expected, _params_by_stage()) == ["validate"]
    assert code_deps.check(ws / "dvc.yaml", expected, _params_by_stage()) == []
    before = (repo_root / "dvc.yaml").read_text()
    after = (ws / "dvc.yaml").read_text()
    assert after == before, "writing back must restore dvc.yaml byte for byte (comments and order kept)"


def test_a_new_import_in_a_helper_module_is_caught(repo_root, tmp_path):
    ws = _copy_repo(repo_root, tmp_path)
    (ws / "pipelines" / "data" / "planted_helper.py").write_text('"""A helper nobody listed."""\n')
    text = ws / "pipelines" / "data" / "text.py"
    text.write_text(text.read_text() + "\n\ndef _planted():\n    from pipelines.data import planted_helper  # noqa\n")
    expected = code_deps.stage_code_deps(STAGES, ws)
    drifts = {d.stage: d for d in code_deps.check(ws / "dvc.yaml", expected, _params_by_stage())}
    users = {s for s, files in expected.items() if "pipelines/data/text.py" in files}
    assert users and set(drifts) == users
    assert all(d.missing == ["pipelines/data/planted_helper.py"] for d in drifts.values())


def test_a_missing_shared_section_param_is_caught(repo_root, tmp_path):
    ws = _copy_repo(repo_root, tmp_path)
    yaml, doc = code_deps._load_dvc_yaml(ws / "dvc.yaml")
    doc["stages"]["gate"]["params"] = [p for p in doc["stages"]["gate"]["params"] if p != "registry"]
    with open(ws / "dvc.yaml", "w") as fh:
        yaml.dump(doc, fh)
    drifts = code_deps.check(ws / "dvc.yaml", code_deps.stage_code_deps(STAGES, ws), _params_by_stage())
    assert [(d.stage, d.missing_params) for d in drifts] == [("gate", ["registry"])]


def test_a_template_named_by_a_module_is_a_code_dep(repo_root):
    deps = code_deps.stage_code_deps(STAGES, repo_root)
    assert "pipelines/templates/dedup_clusters.html.j2" in deps["dedup"]


@pytest.mark.parametrize("flag", ["--check"])
def test_cli_check_passes_on_the_repository(repo_root, flag):
    proc = subprocess.run([LLMOPS, "dvc-deps", flag, "--root", str(repo_root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
