"""Which model version serves: first load with backoff, then alias polling and atomic swaps.

Loading runs in its own thread, beside the version that serves; the swap is one
reference assignment on the event loop, so a request sees either the old or the new
version, never a mix. A failed load or warm-up leaves the old version serving and is
reported in /health and /metrics. So is a registry that cannot be polled: the replica
keeps serving what it has, and /health says since when it cannot see the alias.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.server import model as model_mod
from app.server.config import Config
from app.server.metrics import Metrics


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Stop a background task and wait until it has unwound (its finally blocks ran)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

log = logging.getLogger("app.server.manager")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0

# MLflow's HTTP client retries a refused or failed request with exponential backoff for
# minutes by default (7 retries, backoff factor 2, 120 s timeout): a poll of a stopped
# registry then hangs in those retries and reports nothing (measured: /health said `ready`,
# no error, 30 s into an outage). The poll loop has its own retries with backoff, so each
# MLflow call gets one attempt, bounded in time; a model download that fails is retried by
# the same loop. Set by the replica process for itself; a value already in the environment wins.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def bound_mlflow_client(env: MutableMapping[str, str] = os.environ) -> None:
    for name, value in MLFLOW_CLIENT_ENV.items():
        env.setdefault(name, value)


@dataclass
class LoadError:
    version: str | None
    message: str
    at: float


@dataclass
class RegistryState:
    """What the polls of the registry have seen (times are Unix seconds)."""

    ok: bool | None = None  # whether the last poll resolved the alias; None: no poll finished yet
    last_success_at: float | None = None
    last_error: str | None = None  # kept after a recovery, with its time: the last outage's cause
    last_error_at: float | None = None
    failing_since: float | None = None  # first failure of the current run of failures
    consecutive_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "last_success_at": self.last_success_at,
            "last_error": {"message": self.last_error, "at": self.last_error_at} if self.last_error else None,
            "failing_since": self.failing_since,
            "consecutive_failures": self.consecutive_failures,
        }


class AliasFollower:
    """What following an alias has seen: the version that serves, the last failure, the
    registry's state, and the metrics and log lines each event makes. Shared by the one-process
    ModelManager below and by the supervisor of a replica of several processes
    (supervisor.py), which loads versions through its workers instead of itself."""

    def __init__(self, cfg: Config, metrics: Metrics | None) -> None:
        self.cfg = cfg
        self.metrics = metrics  # None: not exposed (a shadow's view of the primary's alias)
        self.current: Any = None  # the version that serves (a LoadedModel, or its description)
        self.last_error: LoadError | None = None
        self.alias_version: str | None = None
        self.registry = RegistryState()
        self._failed_version: str | None = None

    def _registry_failed(self, message: str) -> None:
        reg = self.registry
        now = time.time()
        if reg.consecutive_failures == 0:
            reg.failing_since = now
        reg.ok = False
        reg.consecutive_failures += 1
        reg.last_error, reg.last_error_at = message, now
        if self.metrics is not None:
            self.metrics.registry_poll_failed()

    def _registry_answered(self) -> None:
        reg = self.registry
        now = time.time()
        if reg.consecutive_failures:
            log.info("registry answers again", extra={"failed_polls": reg.consecutive_failures,
                                                      "failing_for_s": round(now - (reg.failing_since or now), 3)})
        reg.ok = True
        reg.last_success_at = now
        reg.failing_since = None
        reg.consecutive_failures = 0
        if self.metrics is not None:
            self.metrics.registry_poll_succeeded(now)

    def _fail(self, version: str | None, message: str) -> None:
        self.last_error = LoadError(version, message, time.time())
        if self.metrics is not None:
            self.metrics.load_failures.inc()
        self._failed_version = version
        log.warning("model load failed" if version is not None else "registry poll failed",
                    extra={"error": message, "serving_version": self.current.version if self.current else None,
                           "consecutive_poll_failures": self.registry.consecutive_failures})

    def _swapped(self, new: Any, previous: Any, seconds: float) -> None:
        """After `current` became `new`: the error is moot, the metrics and the log say so."""
        self.last_error = None
        self._failed_version = None
        if self.metrics is not None:
            self.metrics.model_loaded(new.version, previous.version if previous else None, seconds)
        log.info("serving model version", extra={"model": self.cfg.model_name, "version": new.version,
                                                 "device": new.device, "flavor": new.flavor,
                                                 "fast_path": new.fast is not None,
                                                 "fast_kernel": new.fast.kernel_name if new.fast else None,
                                                 "previous_version": previous.version if previous else None})


class ModelManager(AliasFollower):
    def __init__(self, cfg: Config, metrics: Metrics | None,
                 loader: Callable[[str, str, str, str, bool], model_mod.LoadedModel] = model_mod.load) -> None:
        super().__init__(cfg, metrics)
        self.loader = loader
        self.current: model_mod.LoadedModel | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._retired: list[model_mod.LoadedModel] = []

    # -- registry ------------------------------------------------------------------------
    def _resolve_alias(self) -> str:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.cfg.tracking_uri)
        mv = self._client.get_model_version_by_alias(self.cfg.model_name, self.cfg.model_alias)
        return str(mv.version)

    async def _check_once(self) -> bool:
        """One poll: resolve the alias and load it if it moved. True when nothing is wrong."""
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(self._pool, self._resolve_alias)
        except Exception as exc:  # noqa: BLE001 - registry unreachable, alias missing...
            message = f"cannot resolve {self.cfg.model_uri}: {exc}"
            self._registry_failed(message)
            self._fail(None, message)
            return False
        self._registry_answered()
        self.alias_version = version
        cur = self.current
        if cur is not None and cur.version == version:
            # The registry answers and wants what serves: whatever failed before is moot.
            self.last_error = None
            return True
        started = time.monotonic()
        log.info("loading model version", extra={"model": self.cfg.model_name, "version": version,
                                                  "serving_version": cur.version if cur else None})
        try:
            new = await loop.run_in_executor(
                self._pool, self.loader, self.cfg.model_name, version, self.cfg.model_alias, self.cfg.device,
                self.cfg.predict_kernels)
        except Exception as exc:  # noqa: BLE001 - a broken version must not take the replica down
            self._fail(version, f"loading {self.cfg.model_name} version {version} failed: {exc!r}")
            return False
        self.current = new  # the swap: requests admitted from now on use `new`
        if cur is not None:
            self._retire(cur)
        self._swapped(new, cur, time.monotonic() - started)
        return True

    def _retire(self, old: model_mod.LoadedModel) -> None:
        """Delete the files of versions two swaps old: the one just replaced may still be
        finishing requests (and some flavours read their files lazily), so it keeps its own."""
        self._retired.append(old)
        while len(self._retired) > 1:
            gone = self._retired.pop(0)
            if gone.local_dir:
                shutil.rmtree(gone.local_dir, ignore_errors=True)

    async def run(self) -> None:
        """Poll forever: backoff while nothing or something broken is pending, else the interval."""
        delay = BACKOFF_START_S
        while True:
            ok = await self._check_once()
            if ok:
                delay = BACKOFF_START_S
                wait = self.cfg.poll_interval_s
            else:
                wait = min(delay, self.cfg.poll_interval_s) if self.current is not None else delay
                delay = min(delay * 2, BACKOFF_MAX_S)
            await asyncio.sleep(wait)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="model-poller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._pool.shutdown(wait=False, cancel_futures=True)
