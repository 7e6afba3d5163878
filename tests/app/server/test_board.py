"""app/server/board.py: the integers a replica's processes share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.server.board import H_GEN_PRIMARY, MAX_WORKERS, SIZE, W_PENDING, W_SERVED, Board


def test_a_second_mapping_sees_every_store_and_a_slot_resets(tmp_path: Path) -> None:
    writer = Board(tmp_path / "board", create=True)
    reader = Board(tmp_path / "board")
    writer.ints[H_GEN_PRIMARY] = 7
    writer.reset_slot(3, pid=1234)
    writer.ints[writer.slot_base(3) + W_PENDING] = 5
    writer.ints[writer.slot_base(3) + W_SERVED] += 2
    assert reader.ints[H_GEN_PRIMARY] == 7
    assert reader.slot(3) == {"pid": 1234, "opened": 0, "closed": 0, "pending": 5, "served": 2, "ready": 0}
    writer.reset_slot(3, pid=99)
    assert reader.slot(3)["pending"] == 0 and reader.slot(3)["pid"] == 99
    # A fork shares the mapping itself: what the child stores, the parent reads.
    pid = os.fork()
    if pid == 0:
        writer.ints[H_GEN_PRIMARY] = 8
        os._exit(0)
    os.waitpid(pid, 0)
    assert reader.ints[H_GEN_PRIMARY] == 8
    reader.close()
    writer.close()


def test_slots_are_bounded_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    board = Board(tmp_path / "board", create=True)
    with pytest.raises(ValueError, match="outside"):
        board.slot_base(MAX_WORKERS)
    board.close()
    other = tmp_path / "other"
    other.write_bytes(bytes(SIZE))
    with pytest.raises(ValueError, match="not a replica board"):
        Board(other)
