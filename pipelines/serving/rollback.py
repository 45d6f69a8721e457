"""`llmops rollback`: move the champion alias back to the previous champion (servers pick it up on their next
alias poll, no restart). The previous champion is the `previous_champion` tag promote wrote on the current
version; `to` names a version explicitly."""
from __future__ import annotations

from pipelines.models import registry as mlflow_registry
from pipelines.models.registry import AliasMove, RegistryConfig


def previous_champion(registry: RegistryConfig) -> int:
    c = mlflow_registry.client(registry.tracking_uri)
    current = mlflow_registry.get_alias_version(c, registry.model_name, registry.alias)
    if current is None:
        raise ValueError(f"no version of '{registry.model_name}' has the alias '{registry.alias}': nothing to roll "
                         "back")
    prev = (current.tags or {}).get("previous_champion")
    if prev in (None, "", "None"):
        raise ValueError(f"{registry.model_name} v{current.version} records no previous champion; name one with "
                         "--to VERSION")
    return int(prev)


def rollback(registry: RegistryConfig, to: int | None = None) -> AliasMove:
    target = to if to is not None else previous_champion(registry)
    return mlflow_registry.set_alias(registry, target)
