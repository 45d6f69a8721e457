"""The docs site builds in strict mode, its configuration reference covers every params.yaml key from the typed
configs, and a broken link fails the build (mkdocs-material, mkdocs.yml + docs/)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(config), "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "LLMOPS_ROOT": str(ROOT)})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = _build(ROOT / "mkdocs.yml", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_site_builds_strict_with_every_nav_page(site):
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)["nav"]

    def pages(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from (pages(value) if isinstance(value, list) else [value])
    for page in pages(nav):
        built = site / (page.removesuffix(".md").removesuffix("index") + "/index.html").lstrip("/")
        built = site / "index.html" if page == "index.md" else built
        assert built.exists(), page
    assert "make loop" in (site / "quickstart" / "index.html").read_text()
    # the infra README is included, not copied
    assert "What is not validated here" in (site / "operations" / "deployment" / "index.html").read_text()


def test_configuration_reference_lists_every_key_of_every_section(site):
    ref = _hook("config_reference")
    page, untyped = ref.render_reference()
    assert untyped == []
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models = ref.section_models()
    assert set(params) <= set(models)
    for section, model in models.items():
        if section not in params:
            continue
        for name in model.model_fields:  # every field of every section's model, with its dotted key
            assert f"| `{section}.{name}` |" in page, f"{section}.{name}"
    # type, bound, shipped value and meaning on one known row (AirflowConfig.api_host, DriftConfig alpha)
    assert "| `airflow.api_host` | str |  | `127.0.0.1` | 127.0.0.1: the UI and REST API on loopback only |" in page
    assert "| `drift.detector.alpha` | float | > 0, < 1 | `0.02` |" in page
    html = (site / "reference" / "configuration" / "index.html").read_text()
    assert "drift.detector.alpha" in html


def test_a_section_no_typed_config_parses_is_reported(tmp_path):
    ref = _hook("config_reference")
    params = (ROOT / "params.yaml").read_text() + "\nmystery:      # not parsed by any model\n  knob: 3\n"
    (tmp_path / "params.yaml").write_text(params)
    page, untyped = ref.render_reference(tmp_path / "params.yaml")
    assert untyped == ["mystery"]
    assert "No typed config parses this section" in page
    assert ref.params_comments(params)["mystery"] == "not parsed by any model"


def test_a_broken_link_fails_the_strict_build(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("hooks"))
    (docs / "quickstart.md").write_text((docs / "quickstart.md").read_text() + "\nSee [the gone page](gone.md).\n")
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    text = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    text = text.replace("  - docs/hooks/", f"  - {ROOT}/docs/hooks/")
    assert config["strict"] == "true"
    (tmp_path / "mkdocs.yml").write_text(text)
    proc = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "gone.md" in proc.stdout + proc.stderr


def test_bench_result_notes_each_have_a_page_in_the_nav(site):
    pages = _hook("bench_pages").bench_pages()
    notes = sorted(p.stem for p in (ROOT / "bench" / "results").glob("*.md"))
    assert sorted(Path(p).stem for p in pages) == notes
    home = (site / "benchmarks" / "index.html").read_text()
    for stem in notes:  # listed in mkdocs.yml or appended to the Benchmarks section by the hook
        assert (site / "benchmarks" / stem / "index.html").exists(), stem
        assert f'href="{stem}/"' in home, stem


def test_readme_is_a_landing_page_whose_links_resolve():
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make demo" in text and "make test" in text and "```mermaid" in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links if "://" not in link), links
