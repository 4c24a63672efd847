"""Prometheus metrics of one server: requests by endpoint and status, tokens in and out, queue depth,
latency, KV bytes held. ``GET /metrics`` returns :meth:`Metrics.render`.

Each :class:`Metrics` has its own ``CollectorRegistry`` (several apps in one process, as in the tests,
never collide) and labels every series with ``model_name`` (vLLM's convention). Endpoint labels come
from a bounded set: a path that no route names is counted as ``other``, so arbitrary URLs cannot grow
the number of series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

#: Latency buckets from 10 ms (a refused request) to 30 minutes (a long document on a CPU), in seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                   600.0, 1200.0, 1800.0)
#: Endpoint labels beyond this many distinct values are counted as ``other`` (a guard on the caller).
MAX_ENDPOINTS = 64
OTHER = "other"


class Metrics:
    """The server's counters, gauges and latency histogram (``longreach_*``), labelled ``model_name``."""

    def __init__(self, model_name: str):
        self.model_name = str(model_name)
        self.registry = CollectorRegistry(auto_describe=True)
        reg, m = self.registry, ["model_name"]
        self._requests = Counter("longreach_requests_total", "HTTP requests answered, by endpoint and status",
                                 m + ["endpoint", "status"], registry=reg)
        self._latency = Histogram("longreach_request_latency_seconds",
                                  "time from a request's arrival to the end of its response (streams included)",
                                  m + ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self._prompt = Counter("longreach_prompt_tokens_total", "prompt tokens of completed requests",
                               m, registry=reg).labels(self.model_name)
        self._completion = Counter("longreach_completion_tokens_total", "tokens generated",
                                   m, registry=reg).labels(self.model_name)
        self._cached = Counter("longreach_cached_prompt_tokens_total",
                               "prompt tokens taken from the document KV reuse cache instead of being computed",
                               m, registry=reg).labels(self.model_name)
        self._waiting = Gauge("longreach_queue_waiting", "requests waiting for a slot on the model",
                              m, registry=reg).labels(self.model_name)
        self._running = Gauge("longreach_requests_running", "requests on the model now",
                              m, registry=reg).labels(self.model_name)
        self._kv = Gauge("longreach_kv_cache_bytes",
                         "bytes of KV cache held now (document reuse cache + requests in flight)",
                         m, registry=reg).labels(self.model_name)
        self._kv_source: Callable[[], int] | None = None
        self._kv.set_function(self._kv_bytes)
        self._endpoints: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ updates
    def request_done(self, path: str, status: int, seconds: float) -> None:
        """One answered (or refused) request: ``path`` is a route template (``/v1/models/{model_id}``) or
        :data:`OTHER`; beyond :data:`MAX_ENDPOINTS` distinct values new ones are counted as ``other``."""
        endpoint = self._endpoint(path)
        self._requests.labels(self.model_name, endpoint, str(int(status))).inc()
        self._latency.labels(self.model_name, endpoint).observe(max(0.0, float(seconds)))

    def tokens(self, prompt: int, completion: int, cached: int) -> None:
        """Tokens of one request: its prompt, what it generated, and how much of the prompt was reused."""
        self._prompt.inc(max(0, int(prompt)))
        self._completion.inc(max(0, int(completion)))
        self._cached.inc(max(0, int(cached)))

    def set_queue(self, waiting: int, running: int) -> None:
        self._waiting.set(waiting)
        self._running.set(running)

    def set_kv_source(self, fn: Callable[[], int]) -> None:
        """``fn()`` -> bytes of KV cache held now; called at each scrape."""
        self._kv_source = fn

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ internals
    def _endpoint(self, path: str) -> str:
        path = str(path)
        with self._lock:
            if path in self._endpoints:
                return path
            if len(self._endpoints) >= MAX_ENDPOINTS or len(path) > 200:
                return OTHER
            self._endpoints.add(path)
            return path

    def _kv_bytes(self) -> float:
        if self._kv_source is None:
            return 0.0
        try:
            return float(self._kv_source())
        except Exception:  # a scrape must not fail because of one gauge; the cause goes to the log
            log.exception("longreach_kv_cache_bytes: the source failed")
            return float("nan")
