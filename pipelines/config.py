"""Typed stage configs read from `params.yaml`, the one source of truth for every setting.

Each stage owns one top-level section of `params.yaml` and declares a pydantic model for it; settings that several
stages share (engines, the model registry, the GX context) have a section of their own, which a stage receives as
a keyword argument of its `run` (see `pipelines.stages.registry.SHARED_SECTIONS`).

Models declare types and bounds, never values: every field is required, so a key missing from `params.yaml` is an
error that names its dotted key (`params.yaml: missing key 'dedup.near_duplicate.bands'`), and a default is never
written twice. The only optional keys are inside the entries of user-declared lists (`ingest.sources[*]`). Code
that needs a config with a few changes (tests, benchmarks) starts from `params.yaml` too: `config_from_params`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.errors import ConfigError

__all__ = ["ConfigError", "StageConfig", "config_from_params", "load_params", "load_section", "optional_fields",
           "parse_section", "project_root"]

DEFAULT_PARAMS = "params.yaml"
T = TypeVar("T", bound=BaseModel)


class StageConfig(BaseModel):
    """Base for stage configs: unknown keys are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def project_root() -> Path:
    """The repository root: LLMOPS_ROOT if set, else the nearest parent holding params.yaml."""
    if env := os.environ.get("LLMOPS_ROOT"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / DEFAULT_PARAMS).exists():
            return candidate
    return here


def absolute_path(path: str) -> str:
    """A relative local path taken from the project root; absolute paths and URIs (s3://...) as they are (a URI
    must not go through Path, which folds its "//"). Paths handed to Ray workers go through this: on a Ray this
    process joined (`make ray-up`, a cluster) the workers do not share this process's working directory."""
    if "://" in path:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (project_root() / p).resolve())


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    params_path = Path(path) if path else project_root() / DEFAULT_PARAMS
    if not params_path.exists():
        raise ConfigError(f"params file not found: {params_path}")
    with open(params_path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{params_path}: top level must be a mapping")
    return data


def _dotted(section: str, loc: tuple[Any, ...]) -> str:
    return ".".join([section, *(str(p) for p in loc)])


def section_values(params: Mapping[str, Any], section: str) -> Any:
    """`params[a][b]` for section "a.b"; ConfigError naming the first missing part."""
    node: Any = params
    walked: list[str] = []
    for part in section.split("."):
        walked.append(part)
        if not isinstance(node, Mapping) or part not in node:
            what = "section" if len(walked) == 1 else "key"
            raise ConfigError(f"params.yaml: missing {what} '{'.'.join(walked)}'")
        node = node[part]
    return node


def parse_section(params: Mapping[str, Any], section: str, model: type[T]) -> T:
    """Validate `params[section]` (a dotted path: "dedup.near_duplicate") against `model`, raising ConfigError
    that names each bad key."""
    try:
        return model.model_validate(section_values(params, section) or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _dotted(section, err["loc"])
            if err["type"] == "missing":
                problems.append(f"missing key '{key}'")
            elif err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"bad value for '{key}': {err['msg']}")
        raise ConfigError("params.yaml: " + "; ".join(problems)) from None


def load_section(section: str, model: type[T], params_path: str | Path | None = None) -> T:
    return parse_section(load_params(params_path), section, model)


def _plain(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def deep_merge(base: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: mappings merge key by key, anything else (lists too) replaces."""
    merged = copy.deepcopy(dict(base or {}))
    for key, value in overrides.items():
        value = _plain(value)
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def config_from_params(
    section: str,
    model: type[T],
    overrides: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | str | Path | None = None,
) -> T:
    """The section's config as `params.yaml` has it, with `overrides` merged in and the result validated (unlike
    `model_copy(update=...)`, a bad override fails here). `params`: loaded params, a params file, or None for the
    project's `params.yaml`."""
    loaded = params if isinstance(params, Mapping) else load_params(params)
    values = deep_merge(section_values(loaded, section), overrides or {})
    *parents, last = section.split(".")
    tree: dict[str, Any] = {last: values}
    for part in reversed(parents):
        tree = {part: tree}
    return parse_section(tree, section, model)


def optional_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the fields of `model` (and of its nested config models) that have a default; the project's
    rule is that there are none outside list entries (tests/test_config_cli.py)."""
    found = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if not info.is_required():
            found.append(dotted)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += optional_fields(annotation, dotted + ".")
    return found
