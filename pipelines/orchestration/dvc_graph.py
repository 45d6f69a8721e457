"""Read dvc.yaml as a stage graph for orchestrators (Airflow), without importing DVC.

DAG files are parsed every few seconds by the Airflow scheduler, so this stays light: two YAML reads and a
`${section.key}` interpolation from params.yaml, which is the subset of DVC templating this project uses.
`tests/test_dvc_graph.py` checks that the edges found here are the ones DVC itself computes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_INTERPOLATION = re.compile(r"\$\{\s*([A-Za-z0-9_.\-]+)\s*\}")


@dataclass(frozen=True)
class StageSpec:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: every path the stage writes
    upstream: tuple[str, ...] = field(default=())


class DvcGraphError(ValueError):
    pass


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DvcGraphError(f"dvc.yaml refers to ${{{dotted}}} but params.yaml has no key '{dotted}'")
        node = node[part]
    return node


def _resolve(value: str, params: dict[str, Any]) -> str:
    return _INTERPOLATION.sub(lambda m: str(_lookup(params, m.group(1))), value)


def _paths(entries: list[Any] | None, params: dict[str, Any]) -> list[str]:
    """dvc.yaml lists a path either as a string or as a one-key mapping {path: options}."""
    paths = []
    for entry in entries or []:
        raw = next(iter(entry)) if isinstance(entry, dict) else entry
        paths.append(_resolve(str(raw), params).rstrip("/"))
    return paths


def _overlaps(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def load_stage_graph(root: str | Path) -> list[StageSpec]:
    """Stages in dvc.yaml order, each with the stages whose outputs it depends on."""
    root = Path(root)
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.exists() else {}
    raw_stages = dvc_yaml.get("stages") or {}
    specs: list[StageSpec] = []
    for name, body in raw_stages.items():
        if "foreach" in body or "matrix" in body:
            raise DvcGraphError(f"stage '{name}': foreach/matrix stages are not supported by the DAG builder")
        outs = _paths(body.get("outs"), params) + _paths(body.get("metrics"), params) + _paths(body.get("plots"), params)
        specs.append(StageSpec(name=name, cmd=_resolve(body["cmd"], params), deps=tuple(_paths(body.get("deps"), params)), outs=tuple(outs)))
    with_edges = []
    for spec in specs:
        upstream = sorted(
            {other.name for other in specs if other.name != spec.name for dep in spec.deps for out in other.outs if _overlaps(dep, out)},
            key=[s.name for s in specs].index,
        )
        with_edges.append(StageSpec(spec.name, spec.cmd, spec.deps, spec.outs, tuple(upstream)))
    return with_edges
