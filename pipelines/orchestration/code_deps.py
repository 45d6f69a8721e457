"""DVC code deps computed from the code: every project file a stage's module really runs, and nothing else.

A stage's code deps are the files of the project modules its module imports, directly or not (lazy imports
inside functions included, `TYPE_CHECKING` blocks left out: they never run), plus the report templates those
modules name in module-level constants ending in `.j2` (see `pipelines.reports`). `dvc.yaml` lists them, so a
change to any of them makes `dvc status` report the stage changed, and a change to anything else does not.

The same goes for params: a stage must list its own section and every shared section its `run` takes
(`engines`, `registry`, `gx`, ...; a sub-key such as `engines.spark` covers it), or DVC would not rerun it when
that setting changes.

`llmops dvc-deps --write` rewrites the `pipelines/...` entries of each stage's `deps` in dvc.yaml (data deps,
comments and order of the rest are kept); `llmops dvc-deps --check` (and tests/test_code_deps.py) fails when they
drift from the imports.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from pipelines import reports
from pipelines.orchestration.imports import PACKAGE, Module, closure, import_graph

# Repository-relative: the tree analysed may be a copy of the project (tests), not the installed package.
TEMPLATES_DIR = Path(PACKAGE) / reports.TEMPLATES_DIR.name
TEMPLATE_SUFFIX = ".j2"


def _templates_named(module: Module, root: Path) -> set[str]:
    """Templates a module names in module-level string constants (`TEMPLATE = "x.html.j2"`)."""
    tree = ast.parse((root / module.path).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value.endswith(TEMPLATE_SUFFIX):
            names.add((TEMPLATES_DIR / value.value).as_posix())
    return names


def code_deps(module_name: str, root: str | Path, graph: tuple | None = None) -> list[str]:
    """Sorted repository-relative paths of every project file `module_name` runs when imported and called."""
    root = Path(root)
    modules, imports = graph or import_graph(root, type_checking=False)
    if module_name not in modules:
        raise KeyError(f"{module_name} is not a module of this project")
    files: set[str] = set()
    for name in closure(module_name, imports):
        module = modules[name]
        if not name.startswith(PACKAGE):
            continue
        files.add(module.path.as_posix())
        files |= _templates_named(module, root)
    missing = sorted(f for f in files if not (root / f).exists())
    if missing:
        raise FileNotFoundError(f"{module_name} names template(s) that do not exist: {', '.join(missing)}")
    return sorted(files)


def stage_code_deps(stages: Mapping[str, str], root: str | Path) -> dict[str, list[str]]:
    """stage name -> its code deps, for every stage of the registry (stage name -> module)."""
    graph = import_graph(root, type_checking=False)
    return {stage: code_deps(module, root, graph) for stage, module in stages.items()}


def _is_code(dep: str) -> bool:
    return dep.startswith(PACKAGE + "/")


@dataclass
class Drift:
    stage: str
    missing: list[str] = field(default_factory=list)  # run by the stage, not in its deps: a stale-result bug
    extra: list[str] = field(default_factory=list)  # in its deps, not run: needless reruns
    missing_params: list[str] = field(default_factory=list)  # sections it reads that its params do not list

    def __str__(self) -> str:
        parts = []
        if self.missing_params:
            parts.append(f"params missing {', '.join(self.missing_params)}")
        if self.missing:
            parts.append(f"missing {', '.join(self.missing)}")
        if self.extra:
            parts.append(f"not imported {', '.join(self.extra)}")
        return f"stage '{self.stage}': " + "; ".join(parts)


def _load_dvc_yaml(path: Path):
    from ruamel.yaml import YAML  # DVC's own YAML library: keeps comments and layout on a round trip

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml, yaml.load(path.read_text(encoding="utf-8"))


def _dep_path(entry) -> str:
    return str(next(iter(entry)) if isinstance(entry, Mapping) else entry)


def _param_names(body) -> list[str]:
    names = []
    for entry in body.get("params") or []:
        if isinstance(entry, Mapping):  # {params-file: [keys]}
            names += [str(k) for v in entry.values() for k in (v or [])]
        else:
            names.append(str(entry))
    return names


def _covers(listed: str, section: str) -> bool:
    return listed == section or listed.startswith(section + ".") or section.startswith(listed + ".")


def _missing_params(body, sections: list[str]) -> list[str]:
    listed = _param_names(body)
    return [s for s in sections if not any(_covers(p, s) for p in listed)]


def check(
    dvc_yaml: str | Path, expected: Mapping[str, list[str]], params: Mapping[str, list[str]] | None = None
) -> list[Drift]:
    """Stages whose `pipelines/...` deps in dvc.yaml differ from `expected` (a stage absent there: all missing),
    or whose params do not list the sections in `params` (stage -> sections its run reads)."""
    _, doc = _load_dvc_yaml(Path(dvc_yaml))
    stages = doc.get("stages") or {}
    drifts = []
    for stage, want in expected.items():
        body = stages.get(stage) or {}
        have = {_dep_path(d) for d in body.get("deps") or [] if _is_code(_dep_path(d))}
        # A listed directory covers the files under it (DVC hashes directories whole).
        covered = {f for f in want if any(f == h or f.startswith(h.rstrip("/") + "/") for h in have)}
        drift = Drift(stage, sorted(set(want) - covered), sorted(h for h in have if h not in want),
                      _missing_params(body, list((params or {}).get(stage, []))))
        if drift.missing or drift.extra or drift.missing_params:
            drifts.append(drift)
    return drifts


def write(
    dvc_yaml: str | Path, expected: Mapping[str, list[str]], params: Mapping[str, list[str]] | None = None
) -> list[str]:
    """Rewrite each stage's code deps in dvc.yaml to `expected` (first, sorted), keeping its other deps and the
    file's comments, and append the sections of `params` its params do not list yet. Returns the stages changed."""
    path = Path(dvc_yaml)
    yaml, doc = _load_dvc_yaml(path)
    changed = []
    for stage, want in expected.items():
        body = doc["stages"][stage]
        deps = body.get("deps")
        if deps is None:
            from ruamel.yaml.comments import CommentedSeq

            deps = body["deps"] = CommentedSeq()
        missing_params = _missing_params(body, list((params or {}).get(stage, [])))
        if missing_params:
            body.setdefault("params", [])
            body["params"].extend(missing_params)
        current = [_dep_path(d) for d in deps if _is_code(_dep_path(d))]
        if current == want:
            if missing_params:
                changed.append(stage)
            continue
        # Delete from the end so the comments ruamel keeps by item index stay with their (data) items.
        for i in reversed(range(len(deps))):
            if _is_code(_dep_path(deps[i])):
                del deps[i]
        for i, dep in enumerate(want):
            deps.insert(i, dep)
        changed.append(stage)
    if changed:
        import io

        from pipelines.io import write_text

        buffer = io.StringIO()
        yaml.dump(doc, buffer)
        write_text(path, buffer.getvalue())
    return changed
