"""One workspace: a repository root, its params.yaml and the MLflow registry it names.

Paths in params.yaml are relative to the root, and so is a relative `sqlite:///` tracking URI: the workspace
resolves them itself instead of relying on the process's working directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import load_params, parse_section


class PlatformError(ValueError):
    """A request the platform cannot answer as asked; the message says what is wrong and what exists."""


class NotFound(PlatformError):
    """An unknown version, monitor run, prompt template, ..."""


@dataclass
class Workspace:
    root: Path
    params: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, root: str | Path) -> "Workspace":
        root = Path(root).resolve()
        return cls(root, load_params(root / "params.yaml"))

    def path(self, rel: str | Path) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def json(self, rel: str | Path | None) -> Any:
        """The JSON file at `rel` (None when absent or unreadable)."""
        if not rel:
            return None
        p = self.path(rel)
        try:
            return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
        except (OSError, ValueError):
            return None

    def section(self, name: str) -> dict[str, Any]:
        node = self.params.get(name)
        return node if isinstance(node, dict) else {}

    # --- registry -----------------------------------------------------------------------------------------------
    def registry(self):
        from pipelines.models.registry import RegistryConfig

        cfg = parse_section(self.params, "registry", RegistryConfig)
        uri = cfg.tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri[len(prefix):] not in ("", ":memory:"):
            uri = prefix + str(self.path(uri[len(prefix):]).resolve())
        return cfg.model_copy(update={"tracking_uri": uri})

    def registry_exists(self) -> bool:
        uri = self.registry().tracking_uri
        return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()

    def client(self):
        from pipelines.models.registry import client

        return client(self.registry().tracking_uri)
