"""procstack.state: the state file (addresses kept across runs, one command at a time)."""

from __future__ import annotations

import pytest

from procstack.errors import StackError
from procstack.state import FIRST_HOST, Paths, StackState


def _state(tmp_path, stack: str = "dev") -> StackState:
    state = StackState(stack, Paths(tmp_path / "s"))
    state.load()
    return state


def test_addresses_are_handed_out_in_order_and_kept_across_runs(tmp_path):
    state = _state(tmp_path)
    assert [state.address(n) for n in ("a", "b", "a")] == [f"127.0.0.{FIRST_HOST}", f"127.0.0.{FIRST_HOST + 1}"] + [
        f"127.0.0.{FIRST_HOST}"
    ]
    state.save()
    again = _state(tmp_path)
    assert again.address("b") == f"127.0.0.{FIRST_HOST + 1}"
    assert again.address("c") == f"127.0.0.{FIRST_HOST + 2}"


def test_the_state_of_another_stack_is_refused(tmp_path):
    _state(tmp_path, "dev").save()
    with pytest.raises(StackError, match="holds stack 'dev', not 'prod'"):
        _state(tmp_path, "prod")


def test_one_command_at_a_time(tmp_path):
    first, second = StackState("dev", Paths(tmp_path)), StackState("dev", Paths(tmp_path))
    with first.locked():
        with pytest.raises(StackError, match="another procstack command"):
            with second.locked():
                pass
    with second.locked():
        assert second.records == {} and second.overrides == {}
