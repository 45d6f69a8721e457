"""Prometheus metrics of the API (one CollectorRegistry per app) and per-request CPU-seconds and cost.

CPU attribution: a sampler thread reads the process CPU time every 100 ms and shares each interval's CPU-seconds
equally among the requests generating during it (they share the forward passes); a request's CPU-seconds times
`serve.cost.price_per_cpu_hour / 3600` is its cost, and cost per 1k tokens = total cost / total tokens * 1000.
The same sampler observes the batch occupancy (requests generating at once) into `llmops_batch_size`.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)


class CpuShare:
    __slots__ = ("seconds",)

    def __init__(self):
        self.seconds = 0.0


class Metrics:
    def __init__(self, price_per_cpu_hour: float, price_per_gpu_hour: float, batch_occupancy: Callable[[], int]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llmops_requests", "API requests by endpoint and status",
                                ["endpoint", "status", "alias", "model_version"], registry=r)
        self.latency = Histogram("llmops_request_latency_seconds", "request latency", ["endpoint", "mode"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmops_time_to_first_token_seconds", "time to first token", ["mode"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("llmops_tokens", "tokens in (prompt) and out (completion)",
                              ["direction", "alias", "model_version"], registry=r)
        self.batch = Histogram("llmops_batch_size", "requests generating at once (sampled every 100 ms)",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.cache = Counter("llmops_cache_requests", "exact-match response cache lookups", ["result"], registry=r)
        self.cache_ratio = Gauge("llmops_cache_hit_ratio", "cache hits / lookups since start", registry=r)
        self.model_info = Gauge("llmops_model_info", "served model version per alias (value 1)",
                                ["model", "alias", "version"], registry=r)
        self.cpu = Counter("llmops_cpu_seconds", "process CPU-seconds spent on requests", registry=r)
        self.req_cpu = Histogram("llmops_request_cpu_seconds", "CPU-seconds per request",
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.cost = Counter("llmops_cost_usd", "compute cost of requests (CPU-seconds x price)", registry=r)
        self.cost_per_1k = Gauge("llmops_cost_per_1k_tokens_usd", "cost per 1000 tokens (in + out) so far",
                                 registry=r)
        self.inflight = Gauge("llmops_requests_in_flight", "requests being served", registry=r)
        self.arm_requests = Counter("llmops_arm_requests", "chat requests by rollout arm (champion, challenger, "
                                    "shadow) and status", ["arm", "rollout_id", "model_version", "status"],
                                    registry=r)
        self.feedback = Counter("llmops_feedback", "accepted feedback by the rated answer's model version and arm",
                                ["model_version", "alias", "arm", "polarity"], registry=r)
        self.feedback_duplicates = Counter("llmops_feedback_duplicates", "feedback repeated for a rated request "
                                           "(idempotent: not counted again)", registry=r)
        self.shadow = Counter("llmops_shadow_requests", "shadow copies: enqueued, completed, failed, dropped (queue "
                              "full) or skipped (no challenger loaded)", ["result"], registry=r)
        self.shadow_queue = Gauge("llmops_shadow_queue_depth", "shadow copies waiting for the challenger", registry=r)
        self.challenger_fallbacks = Counter("llmops_challenger_fallbacks", "challenger-arm requests of a rollout "
                                            "that failed before a byte was sent and were retried on the champion",
                                            ["rollout_id", "model_version", "status"], registry=r)
        self.rollout_share = Gauge("llmops_rollout_challenger_share", "the running rollout's challenger share "
                                   "(canary step; 0 otherwise)", registry=r)
        self.price_cpu_s = price_per_cpu_hour / 3600.0
        self.price_gpu_s = price_per_gpu_hour / 3600.0
        self._hits = self._lookups = 0
        self._cost = 0.0
        self._tokens = 0
        self._shares: set[CpuShare] = set()
        self._lock = threading.Lock()
        self._occupancy = batch_occupancy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="llmops-metrics")
        self._thread.start()

    def _sample(self) -> None:
        last = time.process_time()
        while not self._stop.wait(0.1):
            now = time.process_time()
            delta, last = now - last, now
            with self._lock:
                shares = list(self._shares)
            if shares:
                for s in shares:
                    s.seconds += delta / len(shares)
            n = self._occupancy()
            if n > 0:
                self.batch.observe(n)

    def close(self) -> None:
        self._stop.set()

    def cpu_share(self) -> CpuShare:
        s = CpuShare()
        with self._lock:
            self._shares.add(s)
        return s

    def end_share(self, s: CpuShare, tokens: int) -> float:
        """Stop counting `s`; record its CPU-seconds and cost; returns the cost in USD."""
        with self._lock:
            self._shares.discard(s)
            cost = s.seconds * self.price_cpu_s
            self._cost += cost
            self._tokens += tokens
            per_1k = self._cost / self._tokens * 1000 if self._tokens else 0.0
        self.cpu.inc(s.seconds)
        self.req_cpu.observe(s.seconds)
        self.cost.inc(cost)
        self.cost_per_1k.set(per_1k)
        return cost

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()
        with self._lock:
            self._lookups += 1
            self._hits += hit
            ratio = self._hits / self._lookups
        self.cache_ratio.set(ratio)

    def set_models(self, model: str, served: dict[str, str]) -> None:
        self.model_info.clear()
        for alias, version in served.items():
            self.model_info.labels(model, alias, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
