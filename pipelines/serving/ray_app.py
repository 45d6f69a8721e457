"""The same API as Ray Serve replicas with an `autoscaling_config` (`llmops serve --engine ray`).

Each replica builds the app on its own node (`serve.ingress(builder)`: the builder runs at replica start), loads
the aliased versions and polls the registry like the uvicorn process does, so a moved alias reaches every replica
without a redeploy. Ray Serve's proxy listens on `serve.host:serve.port`; replicas scale between
`serve.ray.min_replicas` and `max_replicas` on ongoing requests per replica (`target_ongoing_requests`).
"""
from __future__ import annotations

import time

from pipelines.models.registry import RegistryConfig
from pipelines.serving.config import ServeConfig


def deployment(cfg: ServeConfig, registry: RegistryConfig):
    from ray import serve

    def build_app():
        from pipelines.serving.app import create_app

        app = create_app(cfg, registry, manage_lifecycle=False)
        app.state.runtime.start()
        return app

    r = cfg.ray
    return serve.deployment(
        serve.ingress(build_app)(type("LLMOpsAPI", (), {})),
        name="llmops-api",
        autoscaling_config={"min_replicas": r.min_replicas, "max_replicas": r.max_replicas,
                            "initial_replicas": max(1, r.min_replicas),
                            "target_ongoing_requests": r.target_ongoing_requests,
                            "upscale_delay_s": r.upscale_delay_s, "downscale_delay_s": r.downscale_delay_s},
        ray_actor_options={"num_cpus": r.num_cpus},
        max_ongoing_requests=max(cfg.limits.max_concurrent, 2),
        health_check_period_s=5,
    ).bind()


def start(cfg: ServeConfig, registry: RegistryConfig, *, ray_address: str | None = None) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(deployment(cfg, registry), name="llmops", route_prefix="/", blocking=False)


def replicas() -> int:
    """Running replicas of the API deployment."""
    from ray import serve

    status = serve.status().applications["llmops"].deployments["llmops-api"]
    return int(status.replica_states.get("RUNNING", 0))


def run_ray(cfg: ServeConfig, registry: RegistryConfig) -> None:
    from pipelines.engines.ray import connect_kwargs  # noqa: F401  (engines section decides the cluster)

    start(cfg, registry)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
