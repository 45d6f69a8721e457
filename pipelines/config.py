"""Typed stage configs read from `params.yaml`.

Each stage owns one top-level section of `params.yaml` and declares a pydantic model for it. Loading is
strict: a missing or misspelled key is an error that names the full dotted key, so a person can fix the
file without reading a traceback.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_PARAMS = "params.yaml"
T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A problem in params.yaml that a person must fix."""


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


def parse_section(params: dict[str, Any], section: str, model: type[T]) -> T:
    """Validate `params[section]` against `model`, raising ConfigError that names each bad key."""
    if section not in params:
        raise ConfigError(f"params.yaml: missing section '{section}'")
    try:
        return model.model_validate(params[section] or {})
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
