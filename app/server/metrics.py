"""Prometheus metrics of one replica (own registry: nothing global leaks between tests).

A replica of one process keeps every value in memory. A replica of several (supervisor.py)
uses prometheus_client's multiprocess mode: each process writes its values to files of its
own in a directory of the replica (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before
anything imports prometheus_client), and whichever process answers /metrics adds them up
(`MultiProcessCollector`), so the counters and histograms are the replica's, and survive a
process that died. The per-request figures bypass prometheus_client there too (`SampleFile`):
its multiprocess values take a lock and pack a struct on every update.
"""

from __future__ import annotations

import bisect
import fcntl
import glob
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


REQUESTS_HELP = "HTTP requests answered, by route and status code."
DURATION_HELP = "Time from request start to answer, by route."
IN_FLIGHT_HELP = "Invocations admitted and not yet answered."
# Files of the multiprocess directory the scrape reads; the lock file keeps a scrape from
# reading while the supervisor folds a dead process's files into the archive.
LOCK_FILE = "collect.lock"
ARCHIVE_PREFIX = "archive"


class SampleFile:
    """One process's values in prometheus_client's multiprocess file format (MmapedDict's:
    a used-bytes header, then entries of key, value, timestamp), incremented in place.

    One writer per file, and readers only read: an aligned 8-byte store needs no lock, and an
    entry is complete before the used-bytes header that makes it visible is written."""

    def __init__(self, path: Path, capacity: int = 1 << 16) -> None:
        self.path = path
        self._f = open(path, "w+b")  # noqa: SIM115 - kept open for the process's life
        self._capacity = capacity
        self._f.truncate(capacity)
        self._map = mmap.mmap(self._f.fileno(), capacity)
        self._used = 8
        self._map[0:4] = struct.pack("i", self._used)
        self.values = memoryview(self._map).cast("d")
        self._index: dict[str, int] = {}

    def slot(self, key: str) -> int:
        """The index in `values` of the value of `key` (added, at 0, when new)."""
        i = self._index.get(key)
        if i is None:
            encoded = key.encode()
            padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
            entry = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, 0.0, 0.0)
            while self._used + len(entry) > self._capacity:
                self._grow()
            self._map[self._used:self._used + len(entry)] = entry
            self._used += len(entry)
            self._map[0:4] = struct.pack("i", self._used)
            i = self._index[key] = (self._used - 16) // 8
        return i

    def _grow(self) -> None:
        self.values.release()
        self._map.close()
        self._capacity *= 2
        self._f.truncate(self._capacity)
        self._map = mmap.mmap(self._f.fileno(), self._capacity)
        self.values = memoryview(self._map).cast("d")


class _SharedRequestStats:
    """_RequestStats' figures, written to this process's files of the multiprocess directory
    (a counter file and a histogram file, named as prometheus_client names its own so that
    `MultiProcessCollector` reads them): two or three float additions per request."""

    def __init__(self, directory: Path, pid: int) -> None:
        self._dir = directory
        self._pid = pid
        self._counts: SampleFile | None = None
        self._hist: SampleFile | None = None
        self._count_slot: dict[tuple[str, int], int] = {}
        self._hist_slots: dict[str, list[int]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        c = self._count_slot.get(key)
        if c is None:
            c = self._count_slot[key] = self._counter_file().slot(mmap_key(
                f"{PREFIX}_requests", f"{PREFIX}_requests_total", ["route", "status"], [route, str(status)],
                REQUESTS_HELP))
        counts = self._counts
        assert counts is not None
        counts.values[c] += 1.0
        h = self._hist_slots.get(route)
        if h is None:
            h = self._hist_slots[route] = self._histogram_slots(route)
        hist = self._hist
        assert hist is not None
        values = hist.values
        # Stored per bucket, not cumulative: the collector accumulates (as for prometheus_client's own).
        values[h[bisect.bisect_left(LATENCY_BUCKETS, seconds)]] += 1.0
        values[h[-1]] += seconds

    def _counter_file(self) -> SampleFile:
        if self._counts is None:
            self._counts = SampleFile(self._dir / f"counter_{self._pid}-requests.db")
        return self._counts

    def _histogram_slots(self, route: str) -> list[int]:
        if self._hist is None:
            self._hist = SampleFile(self._dir / f"histogram_{self._pid}-requests.db")
        name = f"{PREFIX}_request_duration_seconds"
        slots = [self._hist.slot(mmap_key(name, f"{name}_bucket", ["route", "le"], [route, floatToGoString(b)],  # type: ignore[no-untyped-call]
                                          DURATION_HELP)) for b in (*LATENCY_BUCKETS, float("inf"))]
        slots.append(self._hist.slot(mmap_key(name, f"{name}_sum", ["route"], [route], DURATION_HELP)))
        return slots


class _LiveGauges(Collector):
    """Gauges whose value lives in each process's memory or on the board, read at scrape
    time (the in-flight count: a per-request file write would cost more than it tells)."""

    def __init__(self, in_flight: Callable[[], float], workers: Callable[[], dict[str, float]]) -> None:
        self.in_flight = in_flight
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_in_flight_requests", IN_FLIGHT_HELP, value=self.in_flight())
        g = GaugeMetricFamily(f"{PREFIX}_workers", "Serving processes of the replica, by state "
                              "(configured, serving).", labels=["state"])
        for state, n in self.workers().items():
            g.add_metric([state], n)
        yield g


def use_multiprocess_dir(directory: Path) -> None:
    """From now on, prometheus_client metrics created in this process (and its forks) keep
    their values in `directory`. prometheus_client reads PROMETHEUS_MULTIPROC_DIR when first
    imported, which happened before the replica knew it would run several processes; its
    metrics look the value class up on `values` at creation (that module keeps the
    attribute lookup for this purpose), so setting both is enough."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def collect_lock(directory: Path, exclusive: bool) -> int:
    """A shared (scrape) or exclusive (archive) lock on the multiprocess directory; close the fd to release."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    return fd


def archive_dead(directory: Path, pid: int) -> None:
    """Fold a dead process's counter and histogram files into the archive files, so that the
    directory does not grow with every crash (its sums stay in the replica's totals), and
    delete its gauge files (only the supervisor's gauges mean anything, and it is alive)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    fd = collect_lock(directory, exclusive=True)
    try:
        for typ in ("counter", "histogram"):
            dead = glob.glob(str(directory / f"{typ}_{pid}.db")) + glob.glob(str(directory / f"{typ}_{pid}-*.db"))
            if not dead:
                continue
            archive = directory / f"{typ}_{ARCHIVE_PREFIX}.db"
            files = dead + ([str(archive)] if archive.exists() else [])
            merged = MultiProcessCollector.merge(files, accumulate=False)  # type: ignore[no-untyped-call]
            tmp = directory / f"{typ}_{ARCHIVE_PREFIX}.tmp"
            tmp.unlink(missing_ok=True)
            out = MmapedDict(str(tmp))  # type: ignore[no-untyped-call]
            try:
                for metric in merged:
                    for sample in metric.samples:
                        key = json.dumps([metric.name, sample.name, sample.labels, metric.documentation], sort_keys=True)
                        out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
            finally:
                out.close()  # type: ignore[no-untyped-call]
            os.replace(tmp, archive)
            for f in dead:
                os.unlink(f)
        for f in glob.glob(str(directory / f"gauge_*_{pid}.db")):
            os.unlink(f)
    finally:
        os.close(fd)


class Metrics:
    def __init__(self, instance_id: str, model_name: str, alias: str, shared_dir: Path | None = None,
                 workers: Callable[[], dict[str, float]] | None = None) -> None:
        """`shared_dir`: the multiprocess directory of a replica of several processes (None: one
        process, every value in memory). `workers`: the replica's process counts by state."""
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.shared_dir = shared_dir
        self.requests: _RequestStats | _SharedRequestStats
        if shared_dir is None:
            self.requests = _RequestStats()
            r.register(self.requests)
        else:
            self.requests = _SharedRequestStats(shared_dir, os.getpid())
        self.observe = self.requests.observe
        self._pending: Callable[[], float] = lambda: 0.0
        self._live = _LiveGauges(lambda: self._pending(), workers or (lambda: {"configured": 1.0, "serving": 1.0}))
        if shared_dir is None:
            r.register(self._live)
        self.batch_rows = Histogram(f"{PREFIX}_batch_rows", "Rows per model call (micro-batch size).",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=r)
        self.batch_requests = Histogram(f"{PREFIX}_batch_requests", "Requests merged into one model call.",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected", "Invocations refused with 503 because the queue was full.",
                                registry=r)
        # Gauges of the replica as a whole: with several processes only the supervisor sets
        # them (the others' files hold zeros), so the largest value is the replica's.
        self.model_version = Gauge(f"{PREFIX}_model_version_info",
                                   "1 for the model version that serves, 0 for versions served before.",
                                   ["model", "alias", "version"], registry=r, multiprocess_mode="max")
        self.model_version_number = Gauge(f"{PREFIX}_model_version", "Version number that serves (0: none yet).",
                                          registry=r, multiprocess_mode="max")
        self.load_failures = Counter(f"{PREFIX}_model_load_failures",
                                     "Failed attempts to resolve, load or warm up a model version.", registry=r)
        self.load_seconds = Histogram(f"{PREFIX}_model_load_seconds", "Time to load and warm up a version.",
                                      buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r)
        self.swaps = Counter(f"{PREFIX}_model_swaps", "Version changes while serving (promotions).", registry=r)
        self.registry_poll_failures = Counter(f"{PREFIX}_registry_poll_failures",
                                              "Polls of the registry that could not resolve the alias.", registry=r)
        self.registry_poll_ok = Gauge(f"{PREFIX}_registry_poll_ok",
                                      "1 when the last poll of the registry resolved the alias, else 0.", registry=r,
                                      multiprocess_mode="max")
        self.registry_last_success = Gauge(f"{PREFIX}_registry_last_success_timestamp_seconds",
                                           "Unix time of the last poll that resolved the alias.", registry=r,
                                           multiprocess_mode="max")
        self.info = Gauge(f"{PREFIX}_info", "Static facts about this replica.", ["instance_id", "model", "alias"],
                          registry=r, multiprocess_mode="max")
        self.worker_restarts = Counter(f"{PREFIX}_worker_restarts",
                                       "Serving processes that exited unexpectedly and were replaced.", registry=r)
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

    def track_pending(self, pending: Callable[[], float]) -> None:
        """Where the in-flight gauge reads its value at scrape time."""
        self._pending = pending

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        scrape = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(scrape, path=str(self.shared_dir))  # type: ignore[no-untyped-call]
        scrape.register(self._live)
        fd = collect_lock(self.shared_dir, exclusive=False)
        try:
            return generate_latest(scrape)
        finally:
            os.close(fd)
