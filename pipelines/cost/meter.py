"""What a stage run used: wall seconds, CPU-seconds of its whole process tree, peak memory and GPU-seconds.

`ResourceMeter` is a context manager around the stage (`pipelines.stages.registry.run_stage` wraps every stage,
so `llmops run`, `dvc repro` and Airflow all record the same figures). A background thread samples the process
tree of this process every `interval_s` (0.5 s) with psutil:

- **CPU-seconds** (user + system) of this process and of every descendant: Spark's JVM and its Python workers,
  the raylet, GCS and workers of a local Ray started by `ray.init()`, any `subprocess`. The latest `cpu_times` of
  each process (keyed by pid and start time, so a reused pid is another process) is kept, so a child that exits
  before the end still counts up to its last sample. Processes that are gone at the end are also covered by
  `getrusage(RUSAGE_CHILDREN)` (the CPU of reaped children, with the children they reaped); both are lower bounds
  of the same CPU, so the larger one is taken, never their sum. Processes already running when the meter starts
  count only what they use after it. The sampler's own CPU is left out.
- **peak_rss_mb**: the highest summed resident set of the tree over the samples.
- **gpu_seconds**: GPU-device seconds held by a process of the tree, from NVML's running compute processes at each
  sample (a process on two GPUs counts twice). Without NVML, the wall time when this process itself initialised
  CUDA through torch. 0.0 on a machine without a GPU.

Where the figures undercount (CPU is never overcounted, except by a child that was started before the meter and is
reaped while it runs: its whole lifetime is then in `RUSAGE_CHILDREN`):
- work done outside the process tree: an external Ray cluster (`engines.ray.address: auto`, `ray://`, KubeRay), a
  Spark standalone/YARN/Kubernetes master's executors, an MLflow or S3 server, a daemon that re-parents itself;
- a short-lived grandchild that starts and exits between two samples and whose parent is not reaped by this
  process (its CPU then appears nowhere we can read), and a child's CPU after its last sample when it is re-parented
  rather than reaped;
- peak memory between samples (a spike shorter than 0.5 s), while summed RSS counts shared pages (libraries,
  Ray's shared-memory object store, copy-on-write after fork) once per process, which can overstate the tree's
  real footprint;
- GPU use of processes in another PID namespace (containers) that NVML reports under pids we cannot match.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import psutil

from pipelines.cost.prices import PriceTable

DEFAULT_INTERVAL_S = 0.5
MB = 1024 * 1024


class Resources(TypedDict):
    """The `resources` block of a stage's report and metrics file."""

    wall_seconds: float
    cpu_seconds: float  # user + system, this process and its descendants
    peak_rss_mb: float  # peak of the summed RSS of the tree
    gpu_seconds: float
    cost_usd: float  # at price_per_cpu_hour / price_per_gpu_hour (recorded with it: prices change)
    price_per_cpu_hour: float
    price_per_gpu_hour: float
    processes: int  # distinct processes seen in the tree (this one included)
    tokens: NotRequired[int]  # when the stage reports a token count (finetune: train_tokens)
    cost_per_1k_tokens_usd: NotRequired[float]


@dataclass
class Usage:
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    gpu_seconds: float
    processes: int

    def priced(self, prices: PriceTable) -> Resources:
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "gpu_seconds": round(self.gpu_seconds, 3),
            "cost_usd": round(prices.cost(self.cpu_seconds, self.gpu_seconds), 8),
            "price_per_cpu_hour": prices.price_per_cpu_hour,
            "price_per_gpu_hour": prices.price_per_gpu_hour,
            "processes": self.processes,
        }


def _cpu(times: Any) -> float:
    return float(times.user + times.system)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load_nvml():
    """pynvml (nvidia-ml-py), or the copy Ray vendors, loaded from its file so that `ray` is not imported; None
    on a machine without the NVIDIA driver."""
    if not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()):
        return None
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "_private" / "thirdparty" / "pynvml" / "pynvml.py"
        if not path.exists():
            return None
        file_spec = importlib.util.spec_from_file_location("_llmops_pynvml", path)
        pynvml = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(pynvml)  # type: ignore[union-attr]
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no usable driver: no GPU figures
        return None
    return pynvml


class _Gpu:
    """GPU devices on which a pid of the tree holds a compute context, per sample."""

    def __init__(self):
        self.nvml = _load_nvml()
        self.handles = []
        if self.nvml is not None:
            try:
                self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i)
                                for i in range(self.nvml.nvmlDeviceGetCount())]
            except Exception:  # noqa: BLE001
                self.handles = []

    def devices_used(self, pids: set[int]) -> int:
        used = 0
        for handle in self.handles:
            try:
                procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # noqa: BLE001
                continue
            used += any(p.pid in pids for p in procs)
        return used

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass


class ResourceMeter:
    """`with ResourceMeter() as m: work()`, then `m.usage` (or `m.resources(prices)`)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, pid: int | None = None):
        self.interval_s = interval_s
        self.root = psutil.Process(pid or os.getpid())
        self.usage: Usage | None = None
        self._latest: dict[tuple[int, float], float] = {}  # (pid, create_time) -> user+system at the last sample
        self._baseline: dict[tuple[int, float], float] = {}  # CPU of processes already running at the start
        self._peak_rss = 0
        self._gpu_seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler_cpu = 0.0
        self._root_key = (self.root.pid, self.root.create_time())

    # ------------------------------------------------------------------ sampling
    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return [self.root]

    def _sample(self) -> set[tuple[int, float]]:
        """Read the tree once; returns the keys of the processes alive (zombies included) now."""
        alive: set[tuple[int, float]] = set()
        rss = 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    cpu = _cpu(proc.cpu_times())
                    try:
                        rss += proc.memory_info().rss
                    except psutil.Error:  # a zombie has no memory left
                        pass
            except psutil.Error:  # gone between listing and reading
                continue
            alive.add(key)
            with self._lock:
                self._latest[key] = cpu
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)
        return alive

    def _run(self) -> None:
        gpu = _Gpu()
        t_last = time.perf_counter()
        try:
            while not self._stop.wait(self.interval_s):
                alive = self._sample()
                now = time.perf_counter()
                if gpu.handles:
                    self._gpu_seconds += (now - t_last) * gpu.devices_used({pid for pid, _ in alive})
                t_last = now
        finally:
            gpu.close()
            self._sampler_cpu = time.thread_time()  # this thread's own CPU, left out of the figures

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "ResourceMeter":
        self._t0 = time.perf_counter()
        self._children0 = _children_cpu()
        for proc in self._tree():
            try:
                self._baseline[(proc.pid, proc.create_time())] = _cpu(proc.cpu_times())
            except psutil.Error:
                continue
        self._latest.update(self._baseline)
        self._thread = threading.Thread(target=self._run, daemon=True, name="llmops-resource-meter")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        alive = self._sample()  # the last word on everything still running
        wall = time.perf_counter() - self._t0
        with self._lock:
            used = {k: max(0.0, cpu - self._baseline.get(k, 0.0)) for k, cpu in self._latest.items()}
        root = max(0.0, used.pop(self._root_key, 0.0) - self._sampler_cpu)
        running = sum(cpu for k, cpu in used.items() if k in alive)
        gone_sampled = sum(cpu for k, cpu in used.items() if k not in alive)
        gone_reaped = max(0.0, _children_cpu() - self._children0)
        gpu = self._gpu_seconds
        if gpu == 0.0 and _torch_cuda_initialised():
            gpu = wall
        self.usage = Usage(wall_seconds=wall, cpu_seconds=root + running + max(gone_sampled, gone_reaped),
                           peak_rss_mb=self._peak_rss / MB, gpu_seconds=gpu, processes=len(self._latest))

    def resources(self, prices: PriceTable) -> Resources:
        if self.usage is None:
            raise RuntimeError("ResourceMeter.resources: the meter has not finished (use it as a context manager)")
        return self.usage.priced(prices)


def _torch_cuda_initialised() -> bool:
    """This process used CUDA through torch (only looked at when torch is already imported: never imports it)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001
        return False
