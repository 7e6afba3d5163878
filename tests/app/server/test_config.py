"""app/server/config.py: the replica's environment variables, their defaults and their errors."""

from __future__ import annotations

import pytest

from app import contract
from app.server import config as config_mod

from .helpers import BASE_ENV


def test_config_defaults_and_overrides() -> None:
    cfg = config_mod.from_env(BASE_ENV)
    assert cfg.port == contract.REPLICA_PORT and cfg.bind_host == "0.0.0.0"
    assert cfg.device == contract.DEVICE_AUTO
    assert cfg.model_uri == "models:/m@champion"
    assert cfg.predict_kernels is True
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_PORT: "9001", contract.ENV_MAX_BATCH_SIZE: "7",
                               contract.ENV_MAX_BATCH_WAIT_MS: "0.5", contract.ENV_DEVICE: "CUDA",
                               contract.ENV_INSTANCE_ID: "r-3", contract.ENV_PREDICT_KERNELS: "False"})
    assert (cfg.port, cfg.max_batch_size, cfg.max_batch_wait_ms, cfg.device, cfg.instance_id, cfg.predict_kernels) == \
        (9001, 7, 0.5, contract.DEVICE_CUDA, "r-3", False)


@pytest.mark.parametrize(("key", "value"), [
    (contract.ENV_PORT, "http"), (contract.ENV_PORT, "70000"), (contract.ENV_MAX_BATCH_SIZE, "0"),
    (contract.ENV_MAX_QUEUE, "1.5"), (contract.ENV_DEVICE, "tpu"), (contract.ENV_LOG_LEVEL, "loud"),
    (contract.ENV_MAX_BODY_BYTES, "-1"), (contract.ENV_POLL_INTERVAL_S, "never"),
    (contract.ENV_PREDICT_KERNELS, "sometimes"), (contract.ENV_WORKERS, "0"), (contract.ENV_WORKERS, "65"),
    (contract.ENV_WORKERS, "two"),
])
def test_config_errors_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(config_mod.ConfigError, match=key):
        config_mod.from_env({**BASE_ENV, key: value})


@pytest.mark.parametrize("missing", [contract.ENV_TRACKING_URI, contract.ENV_MODEL_NAME, contract.ENV_MODEL_ALIAS])
def test_config_requires_model_coordinates(missing: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != missing}
    with pytest.raises(config_mod.ConfigError, match=missing):
        config_mod.from_env(env)


def test_workers_default_to_one_process_and_take_a_count_or_one_per_gpu() -> None:
    assert config_mod.from_env(BASE_ENV).workers == 1
    assert config_mod.from_env({**BASE_ENV, contract.ENV_WORKERS: "4"}).workers == 4
    assert config_mod.from_env({**BASE_ENV, contract.ENV_WORKERS: contract.WORKERS_PER_GPU}).workers == 0
