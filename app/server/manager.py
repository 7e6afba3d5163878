"""Which model version serves: first load with backoff, then alias polling and atomic swaps.

Loading runs in its own thread, beside the version that serves; the swap is one
reference assignment on the event loop, so a request sees either the old or the new
version, never a mix. A failed load or warm-up leaves the old version serving and is
reported in /health and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
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


@dataclass
class LoadError:
    version: str | None
    message: str
    at: float


class ModelManager:
    def __init__(self, cfg: Config, metrics: Metrics,
                 loader: Callable[[str, str, str, str, bool], model_mod.LoadedModel] = model_mod.load) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.loader = loader
        self.current: model_mod.LoadedModel | None = None
        self.last_error: LoadError | None = None
        self.last_check: float | None = None
        self.alias_version: str | None = None
        self._failed_version: str | None = None
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
            self._fail(None, f"cannot resolve {self.cfg.model_uri}: {exc}")
            return False
        self.last_check = time.time()
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
        self.last_error = None
        self._failed_version = None
        self.metrics.model_loaded(new.version, cur.version if cur else None, time.monotonic() - started)
        log.info("serving model version", extra={"model": new.name, "version": new.version, "device": new.device,
                                                 "flavor": new.flavor, "fast_path": new.fast is not None,
                                                 "fast_kernel": new.fast.kernel_name if new.fast else None,
                                                 "previous_version": cur.version if cur else None})
        return True

    def _retire(self, old: model_mod.LoadedModel) -> None:
        """Delete the files of versions two swaps old: the one just replaced may still be
        finishing requests (and some flavours read their files lazily), so it keeps its own."""
        self._retired.append(old)
        while len(self._retired) > 1:
            gone = self._retired.pop(0)
            if gone.local_dir:
                shutil.rmtree(gone.local_dir, ignore_errors=True)

    def _fail(self, version: str | None, message: str) -> None:
        self.last_error = LoadError(version, message, time.time())
        self.metrics.load_failures.inc()
        self._failed_version = version
        log.warning("model load failed", extra={"error": message,
                                                "serving_version": self.current.version if self.current else None})

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
