"""The Airflow DAG is built from dvc.yaml by a light parser: its edges must be exactly the ones DVC computes."""
from __future__ import annotations

import shutil

import pytest

from pipelines.orchestration.dvc_graph import DvcGraphError, load_stage_graph
from pipelines.stages.registry import STAGES


def test_edges_match_dvc_own_graph(repo_root):
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        dvc_edges = {(u.name, v.name) for u, v in repo.index.graph.edges()}
    ours = {(s.name, up) for s in load_stage_graph(repo_root) for up in s.upstream}
    assert ours == dvc_edges


def test_every_dvc_stage_is_a_registered_stage_run_by_the_cli(repo_root):
    specs = load_stage_graph(repo_root)
    assert [s.name for s in specs] == list(STAGES)
    for spec in specs:
        assert spec.cmd == f"llmops run {spec.name}"
        assert spec.outs, f"{spec.name} declares no outputs"


def test_missing_param_in_interpolation_is_named(tmp_path, repo_root):
    shutil.copy(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text("ingest: {}\n")
    with pytest.raises(DvcGraphError, match=r"prepare_base_model\.output_dir"):
        load_stage_graph(tmp_path)
