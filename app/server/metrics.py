"""Prometheus metrics of one replica (own registry: nothing global leaks between tests)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

PREFIX = "mlserve_replica"
CONTENT_TYPE = CONTENT_TYPE_LATEST


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _RequestStats(Collector):
    """Request counts and latency, kept as plain numbers and turned into metric families at
    scrape time. prometheus_client's Counter/Histogram take a lock per update; these are
    only touched from the event loop thread (requests and scrapes alike), so they need none,
    and at thousands of requests per second the difference shows."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.hist: dict[str, list[float]] = {}  # route -> bucket counts..., +Inf count, sum

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        h = self.hist.get(route)
        if h is None:
            h = self.hist[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        h[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(f"{PREFIX}_requests", "HTTP requests answered, by route and status code.",
                                labels=["route", "status"])
        for (route, status), n in sorted(self.counts.items()):
            c.add_metric([route, str(status)], n)
        yield c
        h = HistogramMetricFamily(f"{PREFIX}_request_duration_seconds",
                                  "Time from request start to answer, by route.", labels=["route"])
        for route, counts in sorted(self.hist.items()):
            cum = 0.0
            buckets: list[tuple[str, float]] = []
            for le, in_bucket in zip(LATENCY_BUCKETS, counts, strict=False):
                cum += in_bucket
                buckets.append((repr(le), cum))
            cum += counts[len(LATENCY_BUCKETS)]
            buckets.append(("+Inf", cum))
            h.add_metric([route], buckets, counts[-1])
        yield h


class Metrics:
    def __init__(self, instance_id: str, model_name: str, alias: str) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = _RequestStats()
        r.register(self.requests)
        self.observe = self.requests.observe
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
        self.registry_poll_failures = Counter(f"{PREFIX}_registry_poll_failures",
                                              "Polls of the registry that could not resolve the alias.", registry=r)
        self.registry_poll_ok = Gauge(f"{PREFIX}_registry_poll_ok",
                                      "1 when the last poll of the registry resolved the alias, else 0.", registry=r)
        self.registry_last_success = Gauge(f"{PREFIX}_registry_last_success_timestamp_seconds",
                                           "Unix time of the last poll that resolved the alias.", registry=r)
        self.info = Gauge(f"{PREFIX}_info", "Static facts about this replica.", ["instance_id", "model", "alias"],
                          registry=r)
        self.timeouts = Counter(f"{PREFIX}_scoring_timeouts", "Invocations answered 504: no answer within the scoring timeout.",
                                registry=r)
        # Shadow replicas: each mirrored request is scored with this replica's version and with
        # the primary's alias; `outcome` is agree, disagree or error (no comparison possible).
        self.shadow_requests = Counter(f"{PREFIX}_shadow_requests",
                                       "Mirrored requests scored by this shadow and by the primary's alias, by outcome.",
                                       ["version", "primary_version", "outcome"], registry=r)
        self.shadow_rows = Counter(f"{PREFIX}_shadow_rows",
                                   "Predicted rows of mirrored requests, by whether the primary's alias predicted the same.",
                                   ["version", "primary_version", "outcome"], registry=r)
        self.payload_log = Counter(f"{PREFIX}_payload_log_records",
                                   "Sampled request/answer pairs by fate: written, dropped_full (buffer full), "
                                   "dropped_error (upload failed), too_large.", ["outcome"], registry=r)
        self.info.labels(instance_id, model_name, alias).set(1)
        self._model = model_name
        self._alias = alias

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

    def registry_poll_failed(self) -> None:
        self.registry_poll_failures.inc()
        self.registry_poll_ok.set(0)

    def registry_poll_succeeded(self, at: float) -> None:
        self.registry_poll_ok.set(1)
        self.registry_last_success.set(at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
