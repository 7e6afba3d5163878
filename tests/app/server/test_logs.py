"""app/server/logs.py: JSON log lines."""

from __future__ import annotations

import json
import logging

from app.server import logs


def test_json_log_lines_carry_instance_and_request_id() -> None:
    fmt = logs.JsonFormatter("r-9")
    token = logs.request_id.set("req-1")
    try:
        rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
        rec.status = 400
        line = json.loads(fmt.format(rec))
    finally:
        logs.request_id.reset(token)
    assert line["instance_id"] == "r-9" and line["request_id"] == "req-1"
    assert line["msg"] == "hello you" and line["status"] == 400 and line["level"] == "info"
