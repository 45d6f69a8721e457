"""The convention for what the demo pipeline writes (issue 34), DVC's example-get-started one: `dvc.lock` and every
metrics and plots file a stage of dvc.yaml declares are committed, as one `dvc repro` wrote them together. Data,
models and reports stay out of git (DVC cache and remote). A stage's committed metrics must be the very files
dvc.lock records (same md5), so a stale snapshot, a metrics file without its lock entry or a lock without its
metrics fails here. Refresh them all with `dvc repro` and commit dvc.lock, metrics/ and plots/ together.

Everything is read from HEAD (git show), not the working tree: a local `make demo` rewrites the files (timings
change on every run) and is a new version to commit, not a broken convention."""
from __future__ import annotations

import hashlib
import subprocess

import pytest
import yaml

from pipelines.orchestration.dvc_graph import _paths, _resolve

OUTPUT_DIRS = ("metrics/", "plots/")


def _git(root, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def committed(repo_root):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout with a commit")
    tracked = set(_git(repo_root, "ls-files").decode().splitlines())
    show = lambda path: _git(repo_root, "show", f"HEAD:{path}")  # noqa: E731
    return tracked, show


def test_dvc_lock_and_every_metrics_and_plots_file_are_committed_together(committed):
    tracked, show = committed
    assert "dvc.lock" in tracked, "dvc.lock must be committed with the metrics it records"
    params = yaml.safe_load(show("params.yaml"))
    stages = yaml.safe_load(show("dvc.yaml"))["stages"]
    lock = yaml.safe_load(show("dvc.lock"))["stages"]
    assert set(lock) == set(stages), "dvc.lock is not from a full `dvc repro` of this dvc.yaml"
    declared: set[str] = set()
    problems = []
    for name, body in stages.items():
        recorded = {o["path"].rstrip("/"): o for o in lock[name].get("outs", [])}
        outs = _paths(body.get("outs"), params) + _paths(body.get("metrics"), params) + _paths(body.get("plots"), params)
        if lock[name]["cmd"] != _resolve(body["cmd"], params) or set(recorded) != set(outs):
            problems.append(f"{name}: dvc.lock's entry (cmd, outs) is not this dvc.yaml stage's")
            continue
        for path in _paths(body.get("metrics"), params) + _paths(body.get("plots"), params):
            declared.add(path)
            if path not in tracked:
                problems.append(f"{name}: {path} is not committed")
            elif hashlib.md5(show(path)).hexdigest() != recorded[path].get("md5"):
                problems.append(f"{name}: committed {path} is not the file dvc.lock records (stale snapshot?)")
    stale = sorted(p for p in tracked if p.startswith(OUTPUT_DIRS) and p not in declared)
    assert not problems and not stale, problems + [f"{p}: committed, but no stage writes it" for p in stale]


def test_data_models_and_reports_stay_out_of_git(committed):
    tracked, _ = committed
    leaked = sorted(p for p in tracked if p.startswith(("data/interim/", "data/curated/", "data/splits/",
                                                         "data/embeddings/", "models/", "reports/", "mlruns")))
    assert leaked == []
