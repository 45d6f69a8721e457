"""The same API as Ray Serve replicas with an `autoscaling_config` (`llmops serve --engine ray`).

`deployment(cfg, registry)` is a Serve application of ONE deployment, `llmops-api`, whose ingress is the FastAPI
app of `pipelines.serving.app.create_app` (`serve.ingress(builder)`: the builder runs at replica start, on the
replica's node, and Serve runs the app's lifespan, which loads the aliased versions and starts the alias poller),
so a moved alias reaches every replica without a redeploy. Replicas scale between `serve.ray.min_replicas` and
`max_replicas` on ongoing requests per replica (`target_ongoing_requests`, `upscale_delay_s`, `downscale_delay_s`,
averaged over `look_back_period_s`, pushed every `metrics_interval_s`). Ray Serve's proxy listens on
`serve.host:serve.port`.

- `build_app(args)`: the application builder a Serve config / KubeRay RayService names in `import_path`
  (`pipelines.serving.ray_app:build_app`); `args.params` may point at another params.yaml.
- `start(cfg, registry)`: connect to Ray (params `engines.ray`: local by default, a cluster by address), start
  Serve's proxy on the configured address and run the application (non-blocking).
- `run_ray(cfg, registry)`: `start` and wait (the CLI).

API keys: each replica reads them from its own environment (`LLMOPS_API_KEYS_FILE`, `LLMOPS_API_KEYS`), i.e. the
Ray node's: the secret is never put into the deployment's runtime_env (Ray shows that in its dashboard). Only the
non-secret variables in `PASS_ENV` are forwarded.
"""
from __future__ import annotations

import os
import time
from typing import Any

from pipelines.models.registry import RegistryConfig
from pipelines.serving.config import ServeConfig

APP_NAME = "llmops"
DEPLOYMENT_NAME = "llmops-api"
# forwarded to the replicas when set here (none is a secret; key files are paths)
PASS_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "LLMOPS_API_KEYS_FILE",
            "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS")


def autoscaling_config(cfg: ServeConfig) -> dict[str, Any]:
    r = cfg.ray
    return {"min_replicas": r.min_replicas, "max_replicas": r.max_replicas,
            "initial_replicas": max(1, r.min_replicas), "target_ongoing_requests": r.target_ongoing_requests,
            "upscale_delay_s": r.upscale_delay_s, "downscale_delay_s": r.downscale_delay_s,
            "look_back_period_s": r.look_back_period_s, "metrics_interval_s": r.metrics_interval_s}


def deployment(cfg: ServeConfig, registry: RegistryConfig):
    """The Serve application (bound deployment) of the API."""
    from ray import serve

    from pipelines.config import project_root

    root = str(project_root())

    def asgi_app():  # runs on the replica
        from pipelines.serving.app import create_app

        return create_app(cfg, registry, root=root)

    @serve.ingress(asgi_app)
    class LLMOpsAPI:
        pass

    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env["LLMOPS_ROOT"] = root
    return serve.deployment(
        LLMOpsAPI,
        name=DEPLOYMENT_NAME,
        autoscaling_config=autoscaling_config(cfg),
        ray_actor_options={"num_cpus": cfg.ray.num_cpus, "runtime_env": {"env_vars": env}},
        # admission is the app's own (serve.limits.max_concurrent -> 503); Serve queues above this per replica
        max_ongoing_requests=max(cfg.limits.max_concurrent, 2),
        health_check_period_s=5,
    ).bind()


def build_app(args: dict[str, Any] | None = None):
    """Application builder for Serve configs (`import_path: pipelines.serving.ray_app:build_app`): the `serve` and
    `registry` sections of params.yaml (or of `args["params"]`). A Serve config's `deployments` entries override
    the autoscaling numbers, as Serve applies them on top of the code's."""
    from pipelines.config import load_section

    params = (args or {}).get("params")
    return deployment(load_section("serve", ServeConfig, params), load_section("registry", RegistryConfig, params))


def start(cfg: ServeConfig, registry: RegistryConfig, *, engines=None, blocking_timeout_s: float = 600) -> None:
    """Connect to Ray, start Serve's proxy on `cfg.host:cfg.port` and deploy; returns once the app is RUNNING."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        from pipelines.engines.ray_engine import init_ray

        init_ray((engines or _engines()).ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(deployment(cfg, registry), name=APP_NAME, route_prefix="/", blocking=False)
    deadline = time.time() + blocking_timeout_s
    while app_status() != "RUNNING":
        if app_status() in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"Ray Serve app {APP_NAME} is {app_status()}: {serve.status().applications}")
        if time.time() > deadline:
            raise RuntimeError(f"Ray Serve app {APP_NAME} not running after {blocking_timeout_s:.0f} s")
        time.sleep(0.5)


def _engines():
    from pipelines.config import load_section
    from pipelines.engines.config import EnginesConfig

    return load_section("engines", EnginesConfig)


def app_status() -> str | None:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    return str(app.status.value if hasattr(app.status, "value") else app.status) if app else None


def replicas() -> int:
    """RUNNING replicas of the API deployment."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None or DEPLOYMENT_NAME not in app.deployments:
        return 0
    states = app.deployments[DEPLOYMENT_NAME].replica_states
    return int(sum(n for s, n in states.items() if str(getattr(s, "value", s)) == "RUNNING"))


def run_ray(cfg: ServeConfig, registry: RegistryConfig) -> None:
    from ray import serve

    start(cfg, registry)
    print(f"Ray Serve: {APP_NAME} on http://{cfg.host}:{cfg.port} ({replicas()} replica(s), autoscaling "
          f"{cfg.ray.min_replicas}..{cfg.ray.max_replicas})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
