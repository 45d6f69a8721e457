"""params.yaml handling and the `llmops` CLI: one source of truth, clear errors that name the key, no tracebacks."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, config_from_params, load_params, optional_fields, parse_section
from pipelines.stages.registry import SHARED_SECTIONS, STAGES, shared_config, stage_config, stage_module

LLMOPS = str(Path(sys.executable).parent / "llmops")


@pytest.mark.parametrize("stage", list(STAGES))
def test_shipped_params_parse_for_every_stage(repo_root, stage):
    module = stage_module(stage)
    parse_section(load_params(repo_root / "params.yaml"), module.SECTION, module.Config)


@pytest.mark.parametrize("key", list(SHARED_SECTIONS))
def test_shipped_params_parse_for_every_shared_section(repo_root, key):
    section, model = SHARED_SECTIONS[key]
    parse_section(load_params(repo_root / "params.yaml"), section, model)


@pytest.mark.parametrize("name", [*STAGES, *(f"shared:{k}" for k in SHARED_SECTIONS)])
def test_no_config_model_writes_a_default(name):
    """Values live in params.yaml only: a default in a model would be a second, silent source of truth."""
    model = SHARED_SECTIONS[name[7:]][1] if name.startswith("shared:") else stage_module(name).Config
    assert optional_fields(model) == []


# Keys from several stages and depths, top-level and nested: each must fail with its full dotted name.
MISSING_KEYS = [
    ("ingest", ("output_dir",)),
    ("ingest", ("quality", "min_words")),
    ("ingest", ("language", "allowed")),
    ("dedup", ("near_duplicate", "bands")),
    ("dedup", ("rejects_dir",)),
    ("validate", ("max_pii_rate",)),
    ("split", ("seed",)),
    ("embed", ("chunking", "overlap_tokens")),
    ("finetune", ("lora", "alpha")),
    ("finetune", ("max_steps",)),
    ("evaluate", ("max_prompt_tokens",)),
    ("evaluate", ("bootstrap", "confidence")),
    ("audit", ("max_prompts",)),
    ("gate", ("floors", "max_perplexity")),
    ("promote", ("record",)),
]


@pytest.mark.parametrize("stage,keys", MISSING_KEYS)
def test_missing_key_is_named_with_its_dotted_path(repo_root, stage, keys):
    params = copy.deepcopy(load_params(repo_root / "params.yaml"))
    node = params[stage_module(stage).SECTION]
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    dotted = ".".join([stage_module(stage).SECTION, *keys])
    with pytest.raises(ConfigError, match=rf"missing key '{dotted}'"):
        parse_section(params, stage_module(stage).SECTION, stage_module(stage).Config)


@pytest.mark.parametrize("section,key", [("engines", ("spark", "master")), ("engines", ("ray", "num_cpus")),
                                          ("registry", ("tracking_uri",)), ("gx", ("context_root",))])
def test_missing_key_of_a_shared_section_is_named(repo_root, section, key):
    params = copy.deepcopy(load_params(repo_root / "params.yaml"))
    node = params[section]
    for part in key[:-1]:
        node = node[part]
    del node[key[-1]]
    shared = next(k for k, (s, _) in SHARED_SECTIONS.items() if s == section)
    with pytest.raises(ConfigError, match=rf"missing key '{section}\.{'.'.join(key)}'"):
        parse_section(params, section, SHARED_SECTIONS[shared][1])


@pytest.mark.parametrize("stage,keys", [("split", ("seeed",)), ("dedup", ("near_duplicate", "threshhold")),
                                        ("gate", ("floors", "max_perplexty"))])
def test_misspelled_key_is_refused_with_its_dotted_path(repo_root, stage, keys):
    params = copy.deepcopy(load_params(repo_root / "params.yaml"))
    node = params[stage]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = 1
    with pytest.raises(ConfigError, match=rf"unknown key '{stage}\.{'.'.join(keys)}'"):
        parse_section(params, stage, stage_module(stage).Config)


def test_missing_shared_section_is_named(repo_root):
    params = copy.deepcopy(load_params(repo_root / "params.yaml"))
    del params["registry"]
    with pytest.raises(ConfigError, match=r"missing section 'registry'"):
        parse_section(params, *SHARED_SECTIONS["registry"])
    del params["dedup"]["near_duplicate"]
    with pytest.raises(ConfigError, match=r"missing key 'dedup\.near_duplicate'"):
        parse_section(params, *SHARED_SECTIONS["near_duplicate"])


def test_overrides_merge_into_params_and_are_validated(repo_root):
    cfg = stage_config("dedup", near_duplicate={"threshold": 0.7})
    shipped = parse_section(load_params(repo_root / "params.yaml"), "dedup", stage_module("dedup").Config)
    assert cfg.near_duplicate.threshold == 0.7
    assert cfg.near_duplicate.bands == shipped.near_duplicate.bands  # the rest comes from params.yaml
    with pytest.raises(ConfigError, match=r"unknown key 'dedup\.near_duplicate\.bandz'"):
        stage_config("dedup", near_duplicate={"bandz": 3})
    with pytest.raises(ConfigError, match=r"bad value for 'split\.eval_fraction'"):
        config_from_params("split", stage_module("split").Config, {"eval_fraction": 2.0})
    assert shared_config("engines", ray={"num_cpus": 1}).ray.num_cpus == 1


def test_shared_settings_are_written_once(repo_root):
    """MLflow's tracking URI and the GX root live in one section each; no stage section repeats them."""
    text = (repo_root / "params.yaml").read_text()
    assert text.count("tracking_uri:") == 1
    assert text.count("context_root:") == 1 and "gx_root" not in text


def test_cli_reports_missing_key_without_traceback(repo_root, tmp_path):
    params = load_params(repo_root / "params.yaml")
    del params["ingest"]["quality"]["min_words"]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = subprocess.run([LLMOPS, "run", "ingest", "--params", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "missing key 'ingest.quality.min_words'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_params_file_and_unknown_stage(tmp_path):
    proc = subprocess.run([LLMOPS, "run", "split", "--params", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and "params file not found" in proc.stderr
    proc = subprocess.run([LLMOPS, "run", "nosuch"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "unknown stage 'nosuch'" in proc.stderr


def test_cli_lists_stages_in_pipeline_order():
    proc = subprocess.run([LLMOPS, "stages"], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == list(STAGES)


def test_paths_for_ray_workers_are_absolute_from_the_project_root(tmp_path, monkeypatch):
    """Stages hand paths to Ray actors and Train workers; on a Ray they joined (`make ray-up`, a cluster) the
    workers run in the raylet's working directory, so a relative path would open another checkout's file."""
    from pipelines.config import absolute_path

    monkeypatch.setenv("LLMOPS_ROOT", str(tmp_path))
    monkeypatch.chdir("/")
    assert absolute_path("models/candidate") == str(tmp_path.resolve() / "models" / "candidate")
    assert absolute_path("/data/x.parquet") == "/data/x.parquet"
    assert absolute_path("s3://bucket/key//x") == "s3://bucket/key//x"
