"""params.yaml handling and the `llmops` CLI: clear errors that name the key, no tracebacks for config mistakes."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_params, parse_section
from pipelines.stages.registry import STAGES, stage_module

LLMOPS = str(Path(sys.executable).parent / "llmops")


def _required_keys():
    for name in STAGES:
        module = stage_module(name)
        for field, info in module.Config.model_fields.items():
            if info.is_required():
                yield name, module.SECTION, field


@pytest.mark.parametrize("stage,section,key", list(_required_keys()))
def test_missing_required_key_is_named(repo_root, stage, section, key):
    params = copy.deepcopy(load_params(repo_root / "params.yaml"))
    del params[section][key]
    with pytest.raises(ConfigError, match=rf"missing key '{section}\.{key}'"):
        parse_section(params, section, stage_module(stage).Config)


@pytest.mark.parametrize("stage", list(STAGES))
def test_shipped_params_parse_for_every_stage(repo_root, stage):
    module = stage_module(stage)
    parse_section(load_params(repo_root / "params.yaml"), module.SECTION, module.Config)


def test_misspelled_key_is_refused(repo_root):
    params = copy.deepcopy(load_params(repo_root / "params.yaml"))
    params["split"]["seeed"] = 1
    with pytest.raises(ConfigError, match=r"unknown key 'split\.seeed'"):
        parse_section(params, "split", stage_module("split").Config)


def test_cli_reports_missing_key_without_traceback(repo_root, tmp_path):
    params = load_params(repo_root / "params.yaml")
    required = [k for k, v in stage_module("ingest").Config.model_fields.items() if v.is_required()]
    assert required, "ingest must have at least one required key"
    del params["ingest"][required[0]]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = subprocess.run([LLMOPS, "run", "ingest", "--params", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"missing key 'ingest.{required[0]}'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_params_file_and_unknown_stage(tmp_path):
    proc = subprocess.run([LLMOPS, "run", "split", "--params", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and "params file not found" in proc.stderr
    proc = subprocess.run([LLMOPS, "run", "nosuch"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "unknown stage 'nosuch'" in proc.stderr


def test_cli_lists_stages_in_pipeline_order():
    proc = subprocess.run([LLMOPS, "stages"], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == list(STAGES)
