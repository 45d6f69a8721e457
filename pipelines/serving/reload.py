"""Which model versions are served, and hot swaps when a registry alias moves.

`Slots` holds one `Served` per alias (champion, and the challenger when a version has that alias). A poller
thread re-resolves the aliases every `serve.reload_poll_s` seconds (and `POST /admin/reload` does it on demand);
when an alias points at a new version, the new version is loaded, warmed up and swapped in under a lock. Requests
take a reference (`acquire`) before generating and release it after, so a request in flight finishes on the
version it started on; the old engine is stopped once its last request is done. No request fails during a swap.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.models.registry import RegistryConfig
from pipelines.serving.engine import Engine

log = logging.getLogger("llmops.serve")


class NoChampion(RuntimeError):
    pass


@dataclass
class Served:
    alias: str
    version: str
    engine: Engine
    run_id: str | None
    source: str
    base_model: str
    adapter_sha256: str | None
    prompt_sha256: str | None  # the prompt-template hash recorded with the version (None: not recorded)
    loaded_at: float
    inflight: int = 0
    retired: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.engine.tok


def _resolve_base(spec: dict) -> str:
    from pipelines.models.registry import resolve_path

    for key in ("base_model_abs", "base_model"):
        value = spec.get(key)
        if value and Path(value).is_absolute() and (Path(value) / "config.json").exists():
            return value
    rel = spec.get("base_model")
    if rel and (resolve_path(rel) / "config.json").exists():
        return str(resolve_path(rel))
    if rel:
        return rel  # a Hugging Face model id, or a path that from_pretrained reports as missing
    raise FileNotFoundError("model version spec names no base model")


def alias_version(registry: RegistryConfig, alias: str):
    from pipelines.models import registry as mlflow_registry

    uri = mlflow_registry.resolve_tracking_uri(registry.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None  # looking must not create a registry
    return mlflow_registry.get_alias_version(mlflow_registry.client(registry.tracking_uri), registry.model_name,
                                             alias)


def load_version(registry: RegistryConfig, alias: str, version, make_engine: Callable[[Any], Engine]) -> Served:
    import mlflow

    from pipelines.models import lm
    from pipelines.models import registry as mlflow_registry

    client = mlflow_registry.client(registry.tracking_uri)
    source = client.get_model_version_download_uri(registry.model_name, version.version)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=source, tracking_uri=mlflow_registry.resolve_tracking_uri(registry.tracking_uri)))
    spec_path = local / mlflow_registry.SPEC_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"{registry.model_name} v{version.version}: {mlflow_registry.SPEC_FILE} missing in "
                                f"{source}")
    base = _resolve_base(json.loads(spec_path.read_text()))
    loaded = lm.load_model(base, local, merge=True, cache=False)
    tags = version.tags or {}
    log.info("loaded %s v%s (alias %s) from %s on base %s", registry.model_name, version.version, alias, source, base)
    return Served(alias=alias, version=str(version.version), engine=make_engine(loaded), run_id=version.run_id,
                  source=source, base_model=base, adapter_sha256=tags.get(mlflow_registry.HASH_TAG),
                  prompt_sha256=tags.get(mlflow_registry.PROMPT_TAG), loaded_at=time.time())


class Slots:
    def __init__(self, registry: RegistryConfig, aliases: list[str], make_engine: Callable[[Any], Engine],
                 on_change: Callable[[], None] | None = None):
        self.registry = registry
        self.aliases = aliases  # aliases[0] is the champion alias (required); the rest are optional
        self.make_engine = make_engine
        self.on_change = on_change or (lambda: None)
        self.served: dict[str, Served] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()  # guards served/inflight
        self._reload_lock = threading.Lock()  # one reload at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.reloads = 0

    # ---------------------------------------------------------------- request side
    def acquire(self, alias: str) -> Served | None:
        with self._lock:
            s = self.served.get(alias)
            if s is not None:
                s.inflight += 1
            return s

    def release(self, s: Served) -> None:
        with self._lock:
            s.inflight -= 1
            close = s.retired and s.inflight == 0
        if close:
            threading.Thread(target=s.engine.close, daemon=True).start()

    # ---------------------------------------------------------------- reload side
    def reload(self, force: bool = False) -> dict:
        """Re-resolve every alias; load and swap those that moved. Returns {alias: {reloaded, version, previous}}."""
        with self._reload_lock:
            result = {}
            for alias in self.aliases:
                current = self.served.get(alias)
                previous = current.version if current else None
                try:
                    version = alias_version(self.registry, alias)
                except Exception as exc:  # registry unreachable: keep serving what we have
                    self.errors[alias] = f"{type(exc).__name__}: {exc}"
                    result[alias] = {"reloaded": False, "version": previous, "previous_version": previous,
                                     "error": self.errors[alias]}
                    continue
                if version is None:
                    self.errors[alias] = (f"no version of '{self.registry.model_name}' has the alias '{alias}' at "
                                          f"{self.registry.tracking_uri}")
                    if current is not None and alias != self.aliases[0]:
                        self._swap(alias, None)  # challenger alias removed: stop routing to it
                        result[alias] = {"reloaded": True, "version": None, "previous_version": previous}
                    else:
                        result[alias] = {"reloaded": False, "version": previous, "previous_version": previous,
                                         "error": self.errors[alias]}
                    continue
                if not force and current is not None and current.version == str(version.version):
                    result[alias] = {"reloaded": False, "version": previous, "previous_version": previous}
                    continue
                try:
                    new = load_version(self.registry, alias, version, self.make_engine)
                    asyncio.run(new.engine.warmup())
                except Exception as exc:
                    log.exception("could not load %s v%s for %s", self.registry.model_name, version.version, alias)
                    self.errors[alias] = f"{type(exc).__name__}: {exc}"
                    result[alias] = {"reloaded": False, "version": previous, "previous_version": previous,
                                     "error": self.errors[alias]}
                    continue
                self.errors.pop(alias, None)
                self._swap(alias, new)
                self.reloads += 1
                result[alias] = {"reloaded": True, "version": new.version, "previous_version": previous}
            return result

    def _swap(self, alias: str, new: Served | None) -> None:
        with self._lock:
            old = self.served.pop(alias, None)
            if new is not None:
                self.served[alias] = new
            if old is not None:
                old.retired = True
                close = old.inflight == 0
            else:
                close = False
        if old is not None and close:
            old.engine.close()
        self.on_change()

    def start_polling(self, every_s: float) -> None:
        if every_s <= 0:
            return

        def loop():
            while not self._stop.wait(every_s):
                try:
                    self.reload()
                except Exception:  # pragma: no cover - the next poll retries
                    log.exception("alias poll failed")

        self._poller = threading.Thread(target=loop, daemon=True, name="llmops-alias-poll")
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            served, self.served = list(self.served.values()), {}
        for s in served:
            s.engine.close()
