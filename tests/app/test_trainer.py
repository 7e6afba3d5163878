"""app/trainer.py against a real registry: it registers, reuses a version for the same inputs,
moves the alias only when asked, and does nothing once the alias is set when the stack says so."""

from __future__ import annotations

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
