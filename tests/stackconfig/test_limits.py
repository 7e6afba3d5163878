"""One set of limits, end to end: the scoring timeout, nginx's read timeout derived from it, the
model load timeout, and the contradictions that fail naming the key to change."""

from __future__ import annotations

import pytest

from stackconfig.settings import READ_TIMEOUT_MARGIN_S, ConfigError, parse


def test_defaults_derive_the_read_timeout_from_the_scoring_timeout() -> None:
    s = parse("s", {})
    assert s.serving.scoring_timeout_s == 30 and s.serving.model_load_timeout_s == 120
    assert s.balancer.read_timeout_s == 30 + READ_TIMEOUT_MARGIN_S
    assert parse("s", {"scoringTimeoutSeconds": "10"}).balancer.read_timeout_s == 10 + READ_TIMEOUT_MARGIN_S


def test_a_set_read_timeout_at_least_the_scoring_timeout_is_kept() -> None:
    assert parse("s", {"balancerReadTimeoutSeconds": "90"}).balancer.read_timeout_s == 90
    assert parse("s", {"scoringTimeoutSeconds": "5", "balancerReadTimeoutSeconds": "6"}).balancer.read_timeout_s == 6


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"balancerReadTimeoutSeconds": "30"}, "balancerReadTimeoutSeconds", "at least scoringTimeoutSeconds + 1 = 31"),
        ({"scoringTimeoutSeconds": "60"}, "shutdownGraceSeconds", "at least scoringTimeoutSeconds (60)"),
        ({"scoringTimeoutSeconds": "10", "shutdownGraceSeconds": "9"}, "shutdownGraceSeconds", "finish a request"),
        ({"scoringTimeoutSeconds": "1", "maxBatchWaitMs": "1000"}, "maxBatchWaitMs", "shorter than scoringTimeoutSeconds"),
        ({"scoringTimeoutSeconds": "0"}, "scoringTimeoutSeconds", "1 to 3600"),
        ({"modelLoadTimeoutSeconds": "5"}, "modelLoadTimeoutSeconds", "10 to 7200"),
    ],
)
def test_contradicting_limits_fail_naming_the_key_to_change(raw: dict[str, str], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse("s", raw)
    assert caught.value.key == key and words in str(caught.value), str(caught.value)


def test_longer_scoring_with_a_longer_grace_is_consistent() -> None:
    s = parse("s", {"scoringTimeoutSeconds": "120", "shutdownGraceSeconds": "120"})
    assert s.balancer.read_timeout_s == 121
