"""A small, bounded load loop that remembers who answered each request.

Used by the end-to-end tests (which need the instance id and model version of every answer,
and every failure) and by the scaling report. Every run is bounded twice: by a request count
and by a wall-clock deadline, and stops by itself. Only loopback URLs are accepted.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import httpx

from app import contract


@lru_cache(maxsize=1)
def iris_row_body() -> bytes:
    """One iris row in the scoring protocol's dataframe_split form (the demo model's schema)."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return json.dumps(
        {"dataframe_split": {"columns": list(data.feature_names), "data": [[float(v) for v in data.data[0]]]}}
    ).encode()


def check_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    if not host.startswith("127."):
        raise ValueError(f"load is only sent to loopback addresses, not {url!r}")


@dataclass(frozen=True)
class Answer:
    t: float  # seconds since the run started, at the answer
    status: int  # 0: no HTTP answer (connection error, timeout)
    instance: str
    version: str
    error: str = ""
    duration: float = 0.0  # seconds from sending the request to its answer (or failure)


@dataclass
class LoadRun:
    answers: list[Answer] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def instances(self, since: float = 0.0) -> Counter[str]:
        return Counter(a.instance for a in self.answers if a.status == 200 and a.t >= since)

    @property
    def throughput(self) -> float:
        return len(self.answers) / max(self.ended - self.started, 1e-9)


class Load:
    """Background load: `with Load(url, ...) as run:` ... then read `run` after the block."""

    def __init__(
        self, url: str, concurrency: int = 4, max_requests: int = 20_000, max_seconds: float = 60.0, timeout_s: float = 10.0
    ) -> None:
        check_loopback(url)
        self.url = url.rstrip("/") + contract.ROUTE_INVOCATIONS
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout_s = timeout_s
        self.run = LoadRun()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._threads: list[threading.Thread] = []

    def _worker(self) -> None:
        body = iris_row_body()
        deadline = self.run.started + self.max_seconds
        with httpx.Client(timeout=self.timeout_s, headers={"content-type": "application/json"}) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                sent = time.monotonic()
                try:
                    r = client.post(self.url, content=body)
                    answer = Answer(
                        time.monotonic() - self.run.started,
                        r.status_code,
                        r.headers.get(contract.HEADER_INSTANCE_ID, ""),
                        r.headers.get(contract.HEADER_MODEL_VERSION, ""),
                        "" if r.status_code == 200 else r.text[:200],
                        time.monotonic() - sent,
                    )
                except httpx.HTTPError as exc:
                    answer = Answer(time.monotonic() - self.run.started, 0, "", "", repr(exc), time.monotonic() - sent)
                with self._lock:
                    self.run.answers.append(answer)

    def start(self) -> Load:
        self.run.started = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.run.started

    def stop(self) -> LoadRun:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        self.run.ended = time.monotonic()
        return self.run

    def wait(self) -> LoadRun:
        """Let the run end by its own bounds."""
        for t in self._threads:
            t.join(self.max_seconds + self.timeout_s + 5)
        self.run.ended = time.monotonic()
        return self.run

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_for(url: str, seconds: float, concurrency: int = 4, max_requests: int = 20_000) -> LoadRun:
    return Load(url, concurrency=concurrency, max_requests=max_requests, max_seconds=seconds).start().wait()
