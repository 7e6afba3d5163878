"""The board: a few integers in shared memory that every process of a replica reads and writes.

A replica with several serving processes (supervisor.py, worker.py) shares one small file,
mapped by all of them. The supervisor writes the header: which generation of each model track
serves (one number per track, so that a promotion is a single store, seen by every process at
the next request), whether the replica drains, and a counter bumped whenever it rewrites the
health document beside the board. Each worker writes only its own slot: connections opened and
closed, invocations pending and answered, read by the supervisor to place new connections and
by any worker that answers /health or /metrics for the whole replica.

One writer per integer, and an aligned 8-byte store is atomic for readers on every platform
CPython runs on here, so nothing takes a lock: a per-request update costs a memoryview store.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

MAGIC = 0x6D6C73657276  # "mlserv"
MAX_WORKERS = 64
HEADER_INTS = 16
SLOT_INTS = 8

# Header fields.
H_MAGIC = 0
H_GEN_PRIMARY = 1  # generation of the replica's own alias that serves (0: none yet)
H_GEN_COMPARE = 2  # shadow replicas: generation of the primary's alias they compare with
H_DRAINING = 3  # 1 once the replica stops: every process answers /ready 503
H_DOC_SEQ = 4  # bumped by the supervisor after each rewrite of the health document

# Worker slot fields (slot i belongs to worker i, and to its replacement after a crash).
W_PID = 0  # written by the supervisor when it starts the worker
W_OPENED = 1  # connections the worker has taken over
W_CLOSED = 2  # ... and closed
W_PENDING = 3  # invocations admitted and not yet answered
W_SERVED = 4  # invocations answered 200
W_READY = 5  # 1 while the worker takes connections

TRACKS = {"primary": H_GEN_PRIMARY, "compare": H_GEN_COMPARE}
SIZE = (HEADER_INTS + SLOT_INTS * MAX_WORKERS) * 8


class Board:
    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)  # the mapping keeps the file
        self.ints = memoryview(self._map).cast("q")
        if create:
            self.ints[H_MAGIC] = MAGIC
        elif self.ints[H_MAGIC] != MAGIC:
            raise ValueError(f"{path} is not a replica board")

    @staticmethod
    def slot_base(index: int) -> int:
        if not 0 <= index < MAX_WORKERS:
            raise ValueError(f"worker index {index} outside 0..{MAX_WORKERS - 1}")
        return HEADER_INTS + SLOT_INTS * index

    def slot(self, index: int) -> dict[str, int]:
        base = self.slot_base(index)
        ints = self.ints
        return {"pid": ints[base + W_PID], "opened": ints[base + W_OPENED], "closed": ints[base + W_CLOSED],
                "pending": ints[base + W_PENDING], "served": ints[base + W_SERVED], "ready": ints[base + W_READY]}

    def reset_slot(self, index: int, pid: int) -> None:
        base = self.slot_base(index)
        for field in range(SLOT_INTS):
            self.ints[base + field] = 0
        self.ints[base + W_PID] = pid

    def close(self) -> None:
        self.ints.release()
        self._map.close()
