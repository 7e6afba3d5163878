"""Replica configuration, read once from the environment (names in `app.contract`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from app import contract

# Used only when the replica runs outside the stack: the Pulumi program always
# sets every variable from the validated stack settings.
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_SHUTDOWN_GRACE_S = 30.0
DEFAULT_SCORING_TIMEOUT_S = 30.0
DEFAULT_GROUP = "default"
DEFAULT_PAYLOAD_LOG_PERCENT = 0.0
DEFAULT_PAYLOAD_LOG_FLUSH_S = 10.0


_BOOLS = {"true": True, "1": True, "false": False, "0": False}


class ConfigError(ValueError):
    """A bad environment variable; the message names it."""


@dataclass(frozen=True)
class Config:
    tracking_uri: str
    model_name: str
    model_alias: str
    instance_id: str
    bind_host: str
    port: int
    poll_interval_s: float
    max_batch_size: int
    max_batch_wait_ms: float
    max_queue: int
    max_body_bytes: int
    device: str
    shutdown_grace_s: float
    log_level: str
    predict_kernels: bool = True
    scoring_timeout_s: float = DEFAULT_SCORING_TIMEOUT_S
    group: str = DEFAULT_GROUP
    compare_alias: str | None = None  # shadow replicas: the primary's alias
    payload_log_percent: float = DEFAULT_PAYLOAD_LOG_PERCENT
    payload_log_flush_s: float = DEFAULT_PAYLOAD_LOG_FLUSH_S
    workers: int = 1  # serving processes; 0: one per visible GPU (contract.WORKERS_PER_GPU)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.model_alias}"


def _num(env: Mapping[str, str], name: str, default: float, lo: float, hi: float, integer: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {raw!r}")
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} must be set")
    return value


def from_env(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    device = env.get(contract.ENV_DEVICE, contract.DEVICE_AUTO).strip().lower() or contract.DEVICE_AUTO
    if device not in (contract.DEVICE_AUTO, contract.DEVICE_CPU, contract.DEVICE_CUDA):
        raise ConfigError(
            f"{contract.ENV_DEVICE} must be one of {contract.DEVICE_AUTO}|{contract.DEVICE_CPU}|{contract.DEVICE_CUDA}, got {device!r}"
        )
    level = env.get(contract.ENV_LOG_LEVEL, "info").strip().lower() or "info"
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"{contract.ENV_LOG_LEVEL} must be debug|info|warning|error|critical, got {level!r}")
    raw_workers = env.get(contract.ENV_WORKERS, "").strip().lower()
    try:
        workers = 0 if raw_workers == contract.WORKERS_PER_GPU else int(
            _num(env, contract.ENV_WORKERS, 1, 1, contract.MAX_WORKERS, integer=True))
    except ConfigError:
        raise ConfigError(f"{contract.ENV_WORKERS} must be a whole number from 1 to {contract.MAX_WORKERS} or "
                          f"{contract.WORKERS_PER_GPU}, got {raw_workers!r}") from None
    kernels = env.get(contract.ENV_PREDICT_KERNELS, "true").strip().lower() or "true"
    if kernels not in _BOOLS:
        raise ConfigError(f"{contract.ENV_PREDICT_KERNELS} must be true or false, got {kernels!r}")
    return Config(
        tracking_uri=_required(env, contract.ENV_TRACKING_URI),
        model_name=_required(env, contract.ENV_MODEL_NAME),
        model_alias=_required(env, contract.ENV_MODEL_ALIAS),
        instance_id=env.get(contract.ENV_INSTANCE_ID, "").strip() or socket.gethostname(),
        bind_host=env.get(contract.ENV_BIND_HOST, "").strip() or "0.0.0.0",
        port=int(_num(env, contract.ENV_PORT, contract.REPLICA_PORT, 1, 65535, integer=True)),
        poll_interval_s=_num(env, contract.ENV_POLL_INTERVAL_S, DEFAULT_POLL_INTERVAL_S, 0.05, 86400),
        max_batch_size=int(_num(env, contract.ENV_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_SIZE, 1, 1 << 20, integer=True)),
        max_batch_wait_ms=_num(env, contract.ENV_MAX_BATCH_WAIT_MS, DEFAULT_MAX_BATCH_WAIT_MS, 0, 10_000),
        max_queue=int(_num(env, contract.ENV_MAX_QUEUE, DEFAULT_MAX_QUEUE, 1, 1 << 24, integer=True)),
        max_body_bytes=int(_num(env, contract.ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES, 1, 1 << 40, integer=True)),
        device=device,
        shutdown_grace_s=_num(env, contract.ENV_SHUTDOWN_GRACE_S, DEFAULT_SHUTDOWN_GRACE_S, 0, 86400),
        log_level=level,
        predict_kernels=_BOOLS[kernels],
        scoring_timeout_s=_num(env, contract.ENV_SCORING_TIMEOUT_S, DEFAULT_SCORING_TIMEOUT_S, 0.001, 86400),
        group=env.get(contract.ENV_GROUP, "").strip() or DEFAULT_GROUP,
        compare_alias=env.get(contract.ENV_COMPARE_ALIAS, "").strip() or None,
        payload_log_percent=_num(env, contract.ENV_PAYLOAD_LOG_PERCENT, DEFAULT_PAYLOAD_LOG_PERCENT, 0, 100),
        payload_log_flush_s=_num(env, contract.ENV_PAYLOAD_LOG_FLUSH_S, DEFAULT_PAYLOAD_LOG_FLUSH_S, 0.05, 3600),
        workers=workers,
    )
