"""app/replay.py against a stand-in of MLflow's artifact proxy (listing and download) and of an
entry serving /invocations: records are read from every log object, replayed, and the
differences reported."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app import contract, replay


def record(i: int, version: str, prediction: int, group: str = "default") -> dict[str, Any]:
    return {"request_id": f"r{i}", "group": group, "version": version, "content_type": "application/json",
            "request": json.dumps({"inputs": [[i]]}), "status": 200, "response": json.dumps({"predictions": [prediction]})}


# Two groups, two versions of the default group, two objects of one version.
OBJECTS = {
    "payload-logs/m/default/1/2026-12-01/a-1.jsonl": [record(0, "1", 0), record(1, "1", 1)],
    "payload-logs/m/default/1/2026-12-01/a-2.jsonl": [record(2, "1", 0)],
    "payload-logs/m/default/2/2026-12-02/a-3.jsonl": [record(3, "2", 1)],
    "payload-logs/m/challenger/5/2026-12-02/b-1.jsonl": [record(4, "5", 0, "challenger")],
}


@pytest.fixture
def server() -> Iterator[str]:
    """The artifact proxy's two read routes, and /invocations answering the input's parity."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlsplit(self.path)
            api = contract.MLFLOW_ARTIFACTS_API
            if url.path == api:
                prefix = urllib.parse.parse_qs(url.query)["path"][0] + "/"
                children = {p[len(prefix):].split("/", 1)[0]: "/" in p[len(prefix):] for p in OBJECTS if p.startswith(prefix)}
                files = [{"path": name, "is_dir": is_dir} for name, is_dir in children.items()]
                self._send(200, json.dumps({"files": files}).encode())
            elif url.path.startswith(api + "/"):
                path = urllib.parse.unquote(url.path[len(api) + 1:])
                self._send(200, "".join(json.dumps(r) + "\n" for r in OBJECTS[path]).encode())
            else:
                self._send(404, b"")

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get(contract.HEADER_AUTHORIZATION) != "Bearer k":
                self._send(401, b'{"error_code": "UNAUTHENTICATED", "message": "no"}')
                return
            self._send(200, json.dumps({"predictions": [body["inputs"][0][0] % 2]}).encode())

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_records_are_read_from_every_object_or_one_group_and_version(server: str) -> None:
    assert [r["request_id"] for r in replay.read_records(server, "m", None, None, 100)] == ["r4", "r0", "r1", "r2", "r3"]
    assert [r["request_id"] for r in replay.read_records(server, "m", "default", "1", 100)] == ["r0", "r1", "r2"]
    assert len(replay.read_records(server, "m", None, None, 2)) == 2


def test_replay_against_an_entry_reports_where_answers_changed(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The entry answers parity: r2 was logged 0 (2 % 2 == 0, same), r3 logged 1 (3 % 2 == 1, same),
    # r4 logged 0 but 4 % 2 == 0 (same); r0, r1 same too. Change one logged answer to see a difference.
    OBJECTS["payload-logs/m/default/1/2026-12-01/a-2.jsonl"] = [record(2, "1", 1)]
    try:
        assert replay.main(["--tracking-uri", server, "--model", "m", "--against", server, "--api-key", "k"]) == 0
    finally:
        OBJECTS["payload-logs/m/default/1/2026-12-01/a-2.jsonl"] = [record(2, "1", 0)]
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert (summary["records"], summary["compared"], summary["agree"], summary["disagree"]) == (5, 5, 4, 1)
    assert summary["differences"][0]["request_id"] == "r2" and out[0].startswith("differs r2")


def test_a_wrong_key_shows_as_differences_not_as_a_crash(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    replay.main(["--tracking-uri", server, "--model", "m", "--group", "challenger", "--against", server, "--api-key", "bad"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["records"] == 1 and summary["disagree"] == 1 and "401" in summary["differences"][0]["second"]


def test_options_are_checked() -> None:
    with pytest.raises(SystemExit):
        replay.main(["--tracking-uri", "http://x", "--model", "m"])  # neither --against nor --versions
    with pytest.raises(SystemExit):
        replay.main(["--tracking-uri", "http://x", "--model", "m", "--version", "1", "--against", "http://y"])
