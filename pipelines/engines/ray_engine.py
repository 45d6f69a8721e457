"""Connect to Ray from `engines.ray` in params.yaml: a local instance by default, a cluster by address."""
from __future__ import annotations

import os

from pipelines.engines.config import RayConfig


def init_ray(cfg: RayConfig):
    import ray  # heavy: imported only when a stage needs Ray

    for key, value in RAY_CORE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return ray
    global _JOINED_CLUSTER
    address = os.environ.get("LLMOPS_RAY_ADDRESS", cfg.address)
    if address is None:
        # A Ray that `ray start` left running here (`make ray-up`): join it, as plain `ray.init()` would, instead of
        # failing on `num_cpus` (which only a new instance takes).
        # ("auto", not the address itself: only that path picks up the head's auth token here, Ray 2.60.)
        address = "auto" if running_ray_start_cluster() else None
    kwargs: dict = {
        "address": address,
        "include_dashboard": cfg.include_dashboard,
        "ignore_reinit_error": True,
        "log_to_driver": True,
        "configure_logging": False,
    }
    if address is None:
        kwargs["num_cpus"] = cfg.num_cpus
    try:
        ray.init(**kwargs)
    except Exception as exc:
        # Ray waits a fixed 30 s for a fresh local raylet to register; on a small, busy machine its Python
        # agents can take longer to import, and the second attempt (warm file cache) usually makes it.
        if address is not None or "timed out during startup" not in str(exc):
            raise
        ray.shutdown()
        ray.init(**kwargs)
    _JOINED_CLUSTER = address is not None
    return ray


_JOINED_CLUSTER = False


def joined_cluster() -> bool:
    """Whether `init_ray` joined a Ray that outlives this process (a `ray start` head or a cluster address), rather
    than starting one that goes away with it."""
    return _JOINED_CLUSTER


def running_ray_start_cluster() -> str | None:
    """The address of the Ray that the last `ray start` on this machine left running, if any (Ray's own lookup:
    RAY_ADDRESS, then the temp dir's record of the last `ray start`)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None)
    except Exception:  # a stale record or a Ray without this helper: start a local instance, as before
        return None


# Ray Train start-up knobs, measured on a 2-core machine (see pipelines/stages/finetune.py for the figures).
# Only defaults: a value already in the environment wins. Train v2 forwards RAY_TRAIN_* variables that are set
# in the driver to its controller and workers, so setting them here before `fit()` is enough.
RAY_TRAIN_ENV_DEFAULTS: dict[str, str] = {
    # The controller polls the worker group every 2 s by default; every state change (workers up, training
    # finished) waits for the next poll. 0.2 s costs nothing measurable and saves seconds per run.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # The preemption watcher is one more actor process (another `import ray` on a busy box) and only matters
    # on clusters whose nodes get drained.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Train's Prometheus metrics callbacks (controller + workers): nothing scrapes them on a laptop.
    "RAY_TRAIN_METRICS_ENABLED": "0",
}

# Ray core start-up knobs (read by `ray.init` and the processes it starts). Only defaults, as above.
RAY_CORE_ENV_DEFAULTS: dict[str, str] = {
    # The usage-stats reporter runs in the dashboard and asks for cluster metadata at start; nothing leaves
    # this machine anyway (no network), so skip it.
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ray_train_env_defaults() -> None:
    for key, value in RAY_TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def start_autoscaling_coordinator() -> None:
    """Create Ray's detached `AutoscalingCoordinator` actor now (non-blocking), not when Train's controller first
    asks for it: its process start then overlaps the driver's own imports instead of stalling the controller
    (measured: the controller's first resource request timed out once while the actor's process started)."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # a Ray without it: Train creates whatever it needs itself
        return
    get_or_create_autoscaling_coordinator()
