"""Prometheus metrics of one replica (own registry: nothing global leaks between tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "mlserve_replica"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, instance_id: str, model_name: str, alias: str) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by route and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time from request start to answer, by route.", ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r)
        self.in_flight = Gauge(f"{PREFIX}_in_flight_requests", "Invocations admitted and not yet answered.",
                               registry=r)
        self.batch_rows = Histogram(f"{PREFIX}_batch_rows", "Rows per model call (micro-batch size).",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=r)
        self.batch_requests = Histogram(f"{PREFIX}_batch_requests", "Requests merged into one model call.",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected", "Invocations refused with 503 because the queue was full.",
                                registry=r)
        self.model_version = Gauge(f"{PREFIX}_model_version_info",
                                   "1 for the model version that serves, 0 for versions served before.",
                                   ["model", "alias", "version"], registry=r)
        self.model_version_number = Gauge(f"{PREFIX}_model_version", "Version number that serves (0: none yet).",
                                          registry=r)
        self.load_failures = Counter(f"{PREFIX}_model_load_failures",
                                     "Failed attempts to resolve, load or warm up a model version.", registry=r)
        self.load_seconds = Histogram(f"{PREFIX}_model_load_seconds", "Time to load and warm up a version.",
                                      buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r)
        self.swaps = Counter(f"{PREFIX}_model_swaps", "Version changes while serving (promotions).", registry=r)
        self.info = Gauge(f"{PREFIX}_info", "Static facts about this replica.", ["instance_id", "model", "alias"],
                          registry=r)
        self.info.labels(instance_id, model_name, alias).set(1)
        self._model = model_name
        self._alias = alias
        # Pre-bound children of the hot path: label lookup costs more than the increment.
        self._inv_latency = self.latency.labels("/invocations")
        self._status_children: dict[tuple[str, int], object] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        child = self._status_children.get(key)
        if child is None:
            child = self._status_children[key] = self.requests.labels(route, str(status))
        child.inc()  # type: ignore[attr-defined]
        (self._inv_latency if route == "/invocations" else self.latency.labels(route)).observe(seconds)

    def model_loaded(self, version: str, previous: str | None, seconds: float) -> None:
        if previous is not None:
            self.model_version.labels(self._model, self._alias, previous).set(0)
            self.swaps.inc()
        self.model_version.labels(self._model, self._alias, version).set(1)
        try:
            self.model_version_number.set(float(version))
        except ValueError:
            pass
        self.load_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
