"""A warm pool of Ray worker processes for Ray Train on a long-lived Ray, so a run does not wait for Python
start-up and imports.

Every Ray Train run creates a controller actor, a synchronization actor and one actor per worker, and every actor
gets a fresh Python process that imports Ray, Ray Train, torch, transformers and peft. Ray itself can keep
processes ready:
- the raylet imports `RAY_preload_python_modules` in each worker process it starts, before the process takes
  work (`preload_env()`; raylet-wide, so `llmops ray up` sets it where the head starts);
- its `PrestartWorkers` RPC starts idle workers for a given runtime env, kept alive for a while
  (`prestart_workers()`). Idle workers not yet bound to a job serve any later job whose actors have the same
  runtime env, so a pool started by `llmops ray up`, or refilled at the end of one run, serves the next run.

The raylet matches an idle worker to an actor on a hash of the actor's serialized runtime env, so the pool must be
started with the exact strings Train's actors will carry (`train_pool_requests()`); tests/test_finetune.py checks
that a Train run's workers land in the pool. The RPC is Ray-internal (Ray 2.60): if it is missing or fails, the
run goes on without a pool, exactly as before. The pool is on the node the driver runs on (the head, on one
machine).
Like SageMaker's warm pools, this trades memory for start-up: each idle worker holds its imports (about 0.6 GB
with torch, transformers and peft). On a Ray started per run it does not pay: with every process importing
everything at once, start-up measured 21.5 s -> 27.1 s on the 2-core box, so the stage uses it only on a
long-lived Ray (bench/bench_finetune_startup.py).
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

# What a Train worker imports before its first step (the controller needs only ray.train.torch). transformers
# is imported lazily by name; peft pulls in its modeling code.
TRAIN_PRELOAD_MODULES: tuple[str, ...] = ("torch", "ray.train.torch", "transformers", "peft")
PRELOAD_ENV_VAR = "RAY_preload_python_modules"
DEFAULT_KEEP_ALIVE_S = 3600


def preload_env(modules: tuple[str, ...] = TRAIN_PRELOAD_MODULES) -> dict[str, str]:
    """The environment a raylet needs so that every worker it starts imports `modules` first. It also stops the
    raylet from prestarting workers for the first driver that connects: those are bound to that driver's job and
    runtime env (so no use to Train), and with the preload each would spend seconds of CPU importing torch."""
    return {PRELOAD_ENV_VAR: ",".join(modules), "RAY_prestart_worker_first_driver": "0"}


def train_runtime_env() -> dict:
    """The runtime env Ray Train (2.60, v2) gives its controller, computed from this process's environment the
    way `DataParallelTrainer._initialize_and_run_controller` does; every other actor of the run inherits it."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate
    from ray.train.v2.api import data_parallel_trainer as dpt

    env_vars = get_env_vars_to_propagate()
    env_vars.setdefault(dpt.RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, dpt.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    return {"env_vars": env_vars}


def train_pool_requests(num_workers: int) -> list[tuple[str, int]]:
    """(serialized runtime env, processes) for one Train run (Ray 2.60, v2):
    - the controller and its `SynchronizationActor` carry Train's runtime env as Python serializes it
      (`RuntimeEnv.serialize()`: sorted keys, `json.dumps` spacing);
    - each training worker asks for env vars of its own, which Ray's core worker merges into the controller's and
      re-serializes compactly: same content, a different string, so a different hash.
    (Ray Data's autoscaling coordinator, a detached actor, is one more process the first time; `llmops ray up`
    creates it before filling the pool.)"""
    from ray.runtime_env import RuntimeEnv

    env = train_runtime_env()
    as_python = RuntimeEnv(**env).serialize()
    as_core_worker = json.dumps(json.loads(as_python), sort_keys=True, separators=(",", ":"))
    return [(as_python, 2), (as_core_worker, num_workers)]


def _local_node() -> dict:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return next(n for n in ray.nodes() if n["NodeID"] == node_id)


def pool_processes(env_vars: dict[str, str]) -> tuple[set[int], set[int]]:
    """(idle, still starting) Ray worker processes on this machine that were started with `env_vars` (a runtime
    env's variables are in the process environment)."""
    import psutil

    idle, starting = set(), set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if not cmdline:
            continue
        is_idle = cmdline[0].startswith("ray::IDLE")  # a registered worker with no task yet
        if not is_idle and not any(part.endswith("default_worker.py") for part in cmdline[:3]):
            continue
        try:
            environ = proc.environ()
        except (psutil.Error, OSError):
            continue
        if all(environ.get(k) == v for k, v in env_vars.items()):
            (idle if is_idle else starting).add(proc.pid)
    return idle, starting


def prestart_workers(
    serialized_runtime_env: str, count: int, keep_alive_s: int = DEFAULT_KEEP_ALIVE_S, register_timeout_s: float = 30.0
) -> int:
    """Ask this node's raylet to start `count` idle Python workers with that runtime env (a connected Ray is
    required) and wait until they registered. Returns how many did. The raylet starts at most as many workers at
    once as the node has CPUs and silently skips the rest of a request, so this asks in rounds and asks again for
    what a round did not start."""
    import time

    from ray._private.grpc_utils import init_grpc_channel  # adds the cluster's auth token when Ray has one
    from ray._private.utils import get_runtime_env_info
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
    from ray.runtime_env import RuntimeEnv

    env = json.loads(serialized_runtime_env)
    info = get_runtime_env_info(RuntimeEnv(**env), is_job_runtime_env=False, serialize=False)
    info.serialized_runtime_env = serialized_runtime_env  # the exact string: the raylet matches on its hash
    env_vars = dict(env.get("env_vars") or {})
    node = _local_node()
    per_round = max(1, int(node.get("Resources", {}).get("CPU", 1)))
    started = 0
    with init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}") as channel:
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        for _ in range(3 * count):  # bounded: a raylet that never starts them must not hang the caller
            if started >= count:
                break
            n = min(count - started, per_round)
            before, _ = pool_processes(env_vars)
            stub.PrestartWorkers(
                node_manager_pb2.PrestartWorkersRequest(
                    language=common_pb2.Language.PYTHON,
                    runtime_env_info=info,
                    keep_alive_duration_secs=int(keep_alive_s),
                    num_workers=n,
                ),
                timeout=10,
            )
            t0 = time.monotonic()
            while True:
                time.sleep(0.2)
                idle, starting = pool_processes(env_vars)
                new = len(idle - before)
                if new >= n or time.monotonic() - t0 > register_timeout_s:
                    break
                if not starting and time.monotonic() - t0 > 2.0:  # the raylet skipped some: ask again
                    break
            started += min(new, n)
    return started


def prestart_for_train_run(num_workers: int, keep_alive_s: int = DEFAULT_KEEP_ALIVE_S) -> int:
    """Fill the pool for one Train run of `num_workers` workers. Returns how many processes registered; 0 when
    this Ray or Ray Train lacks what the pool relies on (a warning; runs then start their processes on demand)."""
    try:
        return sum(prestart_workers(env, n, keep_alive_s) for env, n in train_pool_requests(num_workers))
    except Exception as exc:
        log.warning("Ray warm pool: could not prestart workers (%s: %s); starting them on demand", type(exc).__name__, exc)
        return 0


def prestart_in_background(num_workers: int, keep_alive_s: int = DEFAULT_KEEP_ALIVE_S):
    """`prestart_for_train_run` on a daemon thread (its rounds wait for workers to register); join it before the
    process exits."""
    import threading

    thread = threading.Thread(
        target=prestart_for_train_run, args=(num_workers, keep_alive_s), name="ray-warm-pool", daemon=True
    )
    thread.start()
    return thread
