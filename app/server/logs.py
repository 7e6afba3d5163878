"""JSON log lines, each with the instance id and, inside a request, its request id."""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, instance_id: str, worker: int | None = None) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.worker = worker  # a replica's serving process; None: its only one, or its supervisor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "instance_id": self.instance_id,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup(instance_id: str, level: str, worker: int | None = None) -> None:
    # MLflow installs its own plain-text handler when first imported: import it
    # now so the handler can be removed below.
    import mlflow  # noqa: F401

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(instance_id, worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries log through the root handler, so their lines are JSON too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "mlflow"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # we write our own access lines
    logging.captureWarnings(True)
