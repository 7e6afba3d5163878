"""app/trainer.py against a real registry: it registers, reuses a version for the same inputs,
moves the alias only when asked, and does nothing once the alias is set when the stack says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import contract
from procstack import solo as rp

pytestmark = pytest.mark.live

MODEL = "iris-trainer"
ALIAS = "champion"


def test_trainer_registers_reuses_promotes_and_can_skip(tracking: rp.Proc) -> None:
    first = rp.train(tracking.url, MODEL, ALIAS)
    assert first["version"] == "1" and first["alias_version"] == "1", first
    second = rp.train(tracking.url, MODEL, ALIAS, "--c", "0.05")
    assert second["version"] == "2" and second["registered"] is True, second
    assert second["alias_version"] == "1", second  # not promoted without --promote
    # Idempotent: the same inputs again reuse version 2; --promote moves the alias to it.
    again = rp.train(tracking.url, MODEL, ALIAS, "--c", "0.05", "--promote")
    assert again["version"] == "2" and again["registered"] is False and again["alias_version"] == "2", again
    skipped = rp.train(tracking.url, MODEL, ALIAS, env_extra={contract.ENV_TRAINER_ONLY_IF_EMPTY: "1"})
    assert skipped["version"] is None and skipped["alias_version"] == "2", skipped


def test_the_trained_model_is_logged_and_served_without_warnings(tracking: rp.Proc, tmp_path: Path) -> None:
    """Fitted with feature names (issue 11): neither logging it (MLflow checks the input
    example) nor serving it (the fast path's estimator call and MLflow's pyfunc path) makes
    scikit-learn warn about feature names; no GitPython warning either."""
    from tests.app import test_replica_conformance as conf

    printed: list[str] = []
    trained = rp.train(tracking.url, "iris-quiet", ALIAS, output=printed)
    assert trained["version"] == "1", trained
    assert printed and not any(_noisy(text) for text in printed), [text[-2000:] for text in printed]
    # Kernels off: every request reaches the estimator (with the kernel on, the fast path
    # never calls it and could not warn).
    replica = rp.start_replica(tracking.url, "iris-quiet", ALIAS, tmp_path, **{contract.ENV_PREDICT_KERNELS: "false"})
    try:
        for name, (ct, body) in sorted(conf.GOOD.items()):
            answer = conf._post(replica.url, ct, body)
            assert answer.status_code == 200, (name, answer.text[:300])
    finally:
        replica.stop()
    log = replica.log_path.read_text(errors="replace")
    assert "serving model version" in log and "replica stopped" in log, log[-2000:]  # the whole log was read
    assert not _noisy(log), log[-3000:]


def _noisy(text: str) -> bool:
    return "feature names" in text or "GIT_PYTHON_REFRESH" in text or "git executable" in text.lower()
