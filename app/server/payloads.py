"""Sampled payload logs: request/answer pairs written as JSON lines to the artifact store.

A replica with MLSERVE_PAYLOAD_LOG_PERCENT > 0 offers each sampled invocation (request body,
answer body, status, version, timing) to a bounded in-memory buffer; a background thread
uploads the buffer every MLSERVE_PAYLOAD_LOG_FLUSH_S seconds, or as soon as it holds
BATCH_BYTES, one object per (group, model version) per upload:

    payload-logs/<model>/<group>/<version>/<YYYY-MM-DD>/<instance>-<UTC time>-<seq>.jsonl

The replica has no storage credentials: it writes through the MLflow server's artifact proxy
(`PUT /api/2.0/mlflow-artifacts/artifacts/<path>`, the server runs with `--serve-artifacts`),
the way it already reads models. Nothing here can block or fail a request: `offer` only
appends under a lock (or counts a drop when the buffer is full), and an upload that fails is
dropped and counted after one retry. Each line is one JSON object (`Record`); the request and
answer bodies are kept as the exact text that was sent, so that they can be replayed
(`python -m app.replay`).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from app import contract
from app.server.metrics import Metrics

log = logging.getLogger("app.server.payloads")

# The buffer holds at most this much; beyond it records are dropped (and counted) until the
# next upload empties it. A record larger than MAX_RECORD_BYTES is never kept.
MAX_BUFFER_BYTES = 8 * 2**20
MAX_RECORD_BYTES = 1 * 2**20
BATCH_BYTES = 1 * 2**20
UPLOAD_TIMEOUT_S = 10.0
UPLOAD_ATTEMPTS = 2


def object_path(model: str, group: str, version: str, instance: str, at: float, seq: int) -> str:
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f"{int(at * 1000) % 1000:03d}Z"
    return f"{contract.PAYLOAD_LOG_PREFIX}/{model}/{group}/{version}/{day}/{instance}-{stamp}-{seq:06d}.jsonl"


def artifact_url(tracking_uri: str, path: str) -> str:
    return f"{tracking_uri.rstrip('/')}{contract.MLFLOW_ARTIFACTS_API}/{urllib.parse.quote(path)}"


def put_object(tracking_uri: str, path: str, data: bytes) -> None:
    request = urllib.request.Request(artifact_url(tracking_uri, path), data=data, method="PUT",
                                     headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_S) as response:  # noqa: S310 - the MLflow server's URL from config
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")


class PayloadLog:
    """The sampled records of one replica, buffered and uploaded in the background."""

    def __init__(self, tracking_uri: str, model: str, group: str, instance: str, flush_s: float, metrics: Metrics,
                 upload: Callable[[str, str, bytes], None] = put_object) -> None:
        self.tracking_uri = tracking_uri
        self.model = model
        self.group = group
        self.instance = instance
        self.flush_s = flush_s
        self.metrics = metrics
        self.upload = upload
        self._lock = threading.Lock()
        self._records: list[tuple[str, bytes]] = []  # (version, JSON line)
        self._bytes = 0
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- on the event loop ------------------------------------------------------------------
    def offer(self, version: str, record: dict[str, Any]) -> None:
        """Keep one record for the next upload; never blocks, never raises."""
        try:
            line = orjson.dumps(record) + b"\n"
        except (TypeError, ValueError):
            log.exception("payload record not serialisable; dropped")
            self.metrics.payload_log.labels("dropped_error").inc()
            return
        if len(line) > MAX_RECORD_BYTES:
            self.metrics.payload_log.labels("too_large").inc()
            return
        full = ready = False
        with self._lock:
            if self._bytes + len(line) > MAX_BUFFER_BYTES:
                full = True
            else:
                self._records.append((version, line))
                self._bytes += len(line)
                ready = self._bytes >= BATCH_BYTES
        if full:
            self.metrics.payload_log.labels("dropped_full").inc()
        elif ready:
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Upload what is buffered (bounded by `timeout_s`), then end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the upload thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            records, self._records, self._bytes = self._records, [], 0
        if not records:
            return
        by_version: dict[str, list[bytes]] = {}
        for version, line in records:
            by_version.setdefault(version, []).append(line)
        for version, lines in by_version.items():
            self._seq += 1
            path = object_path(self.model, self.group, version, self.instance, time.time(), self._seq)
            data = b"".join(lines)
            for attempt in range(UPLOAD_ATTEMPTS):
                try:
                    self.upload(self.tracking_uri, path, data)
                except (OSError, urllib.error.URLError, ValueError) as exc:
                    if attempt + 1 < UPLOAD_ATTEMPTS:
                        continue
                    log.warning("payload log upload failed; records dropped",
                                extra={"path": path, "records": len(lines), "error": repr(exc)})
                    self.metrics.payload_log.labels("dropped_error").inc(len(lines))
                else:
                    self.metrics.payload_log.labels("written").inc(len(lines))
                    break
