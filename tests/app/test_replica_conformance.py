"""The same requests to our replica and to `mlflow models serve` on the same model get the
same status codes and the same predictions or errors: every input format, the fast path
(single and multi-row, reordered columns, micro-batched under concurrency) and every
bad-input case. Where ours differs on purpose (MLflow's bare 500s), DIFFERENT lists the
case and asserts both answers."""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Any

import httpx
import pytest

from app import contract

pytestmark = pytest.mark.live

COLS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6, 3, 5, 2]]
JSON = "application/json"


def records(rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(COLS, r, strict=True)) for r in rows]


def columnar(rows: list[list[Any]]) -> dict[str, list[Any]]:
    return {c: [r[i] for r in rows] for i, c in enumerate(COLS)}


def j(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def csv(rows: list[list[Any]], header: list[str] = COLS) -> bytes:
    return ("\n".join([",".join(header)] + [",".join(str(v) for v in r) for r in rows]) + "\n").encode()


GOOD = {
    "split-1": (JSON, j({"dataframe_split": {"columns": COLS, "data": ROWS[:1]}})),
    "split-4": (JSON, j({"dataframe_split": {"columns": COLS, "data": ROWS}})),
    "split-reordered": (JSON, j({"dataframe_split": {"columns": COLS[::-1], "data": [r[::-1] for r in ROWS]}})),
    "split-ints": (JSON, j({"dataframe_split": {"columns": COLS, "data": [[6, 3, 5, 2]]}})),
    "split-with-index": (JSON, j({"dataframe_split": {"columns": COLS, "index": [7], "data": ROWS[:1]}})),
    "records": (JSON, j({"dataframe_records": records(ROWS)})),
    "instances-records": (JSON, j({"instances": records(ROWS)})),
    "inputs-records": (JSON, j({"inputs": records(ROWS)})),
    "inputs-columnar": (JSON, j({"inputs": columnar(ROWS)})),
    "instances-columnar": (JSON, j({"instances": columnar(ROWS)})),
    "params-ignored": (JSON, j({"dataframe_split": {"columns": COLS, "data": ROWS}, "params": {"x": 1}})),
    "extra-top-level-key": (JSON, j({"dataframe_records": records(ROWS[:2]), "comment": "hi"})),
    "extra-column": (JSON, j({"dataframe_split": {"columns": COLS + ["x"], "data": [r + [9] for r in ROWS]}})),
    "bools": (JSON, j({"dataframe_records": [dict.fromkeys(COLS, True)]})),
    "charset-utf8": ("application/json; charset=utf-8", j({"dataframe_records": records(ROWS)})),
    "csv": ("text/csv", csv(ROWS)),
    "csv-charset": ("text/csv; charset=utf-8", csv(ROWS)),
    "big-number": (JSON, j({"dataframe_split": {"columns": COLS, "data": [[1e300, 1, 1, 1]]}})),
}

BAD = {
    "malformed-json": (JSON, b'{"dataframe_split": {'),
    "json-list": (JSON, b"[1, 2, 3]"),
    "json-scalar": (JSON, b"42"),
    "not-utf8": (JSON, b'{"inputs": "\xff\xfe"}'),
    "unknown-format-key": (JSON, j({"data": ROWS})),
    "no-format-key": (JSON, j({})),
    "two-format-keys": (JSON, j({"dataframe_split": {"columns": COLS, "data": ROWS}, "inputs": records(ROWS)})),
    "missing-column": (JSON, j({"dataframe_split": {"columns": COLS[:3], "data": [r[:3] for r in ROWS]}})),
    "renamed-column": (JSON, j({"dataframe_split": {"columns": COLS[:3] + ["x"], "data": ROWS}})),
    "string-value": (JSON, j({"dataframe_records": [dict.fromkeys(COLS, "abc")]})),
    "null-value": (JSON, j({"dataframe_split": {"columns": COLS, "data": [[5.1, 3.5, 1.4, None]]}})),
    "nan-literal": (JSON, b'{"dataframe_split": {"columns": %s, "data": [[NaN, 1, 1, 1]]}}' % json.dumps(COLS).encode()),
    "ragged-rows": (JSON, j({"dataframe_split": {"columns": COLS, "data": [[1, 2, 3]]}})),
    "split-no-columns": (JSON, j({"dataframe_split": {"data": ROWS}})),
    "instances-lists": (JSON, j({"instances": ROWS})),
    "inputs-lists": (JSON, j({"inputs": ROWS})),
    "nested-values": (JSON, j({"dataframe_records": [dict.fromkeys(COLS, [1, 2])]})),
    "empty-data": (JSON, j({"dataframe_split": {"columns": COLS, "data": []}})),
    "csv-bad-values": ("text/csv", csv([["a", "b", "c", "d"]])),
    "csv-missing-column": ("text/csv", csv([r[:3] for r in ROWS], COLS[:3])),
    "text-plain": ("text/plain", j({"dataframe_records": records(ROWS)})),
    "form": ("application/x-www-form-urlencoded", b"a=1"),
    "latin1-charset": ("application/json; charset=latin-1", j({"dataframe_records": records(ROWS)})),
    "unknown-ct-param": ("application/json; format=pandas-split", j({"dataframe_records": records(ROWS)})),
}


def nested(depth: int) -> bytes:
    """`inputs` nested `depth` arrays and objects deep, the outer object included."""
    return ('{"inputs": ' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}").encode()


# Where ours differs from `mlflow models serve` on purpose (app/README.md, "Errors"): the request,
# what MLflow answers (status, and whether as JSON: asserted, so that a change on MLflow's side
# shows here), and what we answer (status and error_code, always as JSON).
DIFFERENT = {
    # MLflow's recursive JSON decoder runs out of stack: its server answers a bare 500.
    "nested-past-mlflows-stack": (JSON, nested(5_000), (500, False), (400, "BAD_REQUEST")),
    # Past our depth limit (128), short of MLflow's stack: both 400, ours with our message.
    "nested-past-our-limit": (JSON, nested(200), (400, True), (400, "BAD_REQUEST")),
    # MLflow's scoring function raises TypeError (a list is no column name): a bare 500 there.
    "list-as-column-name": (JSON, j({"dataframe_split": {"columns": [COLS[:1], *COLS[1:]], "data": ROWS[:1]}}),
                            (500, False), (500, "INTERNAL_ERROR")),
    # MLflow's scoring function reads the content type's parts without a None check: a bare 500.
    "no-content-type": (None, j({"dataframe_records": records(ROWS)}), (500, False), (500, "INTERNAL_ERROR")),
}


def _post(base: str, ct: str | None, body: bytes) -> httpx.Response:
    headers = {"Content-Type": ct} if ct is not None else {}
    return httpx.post(base + contract.ROUTE_INVOCATIONS, content=body, headers=headers, timeout=60)


_SET_RE = re.compile(r"\{'[^'{}]*'(?:, '[^'{}]*')*\}")


def _norm(message: str) -> str:
    """MLflow prints Python sets in some messages; their order depends on the process's hash seed."""
    return _SET_RE.sub(lambda m: "{" + ", ".join(sorted(m.group(0)[1:-1].split(", "))) + "}", message)


def _compare(ours: httpx.Response, theirs: httpx.Response) -> None:
    assert ours.status_code == theirs.status_code, (ours.text[:500], theirs.text[:500])
    if theirs.status_code == 200:
        assert ours.json() == theirs.json()
        assert "predictions" in ours.json()
    elif theirs.headers.get("content-type", "").startswith("application/json"):
        o, t = ours.json(), theirs.json()
        assert o["error_code"] == t["error_code"]
        assert _norm(o["message"]) == _norm(t["message"])
    else:
        assert ours.text == theirs.text


@pytest.mark.parametrize("case", sorted(GOOD))
def test_accepted_inputs_match(case: str, replica: Any, mlflow_serve: Any) -> None:
    ct, body = GOOD[case]
    theirs = _post(mlflow_serve.url, ct, body)
    assert theirs.status_code == 200, theirs.text  # the case really is a good input
    ours = _post(replica.url, ct, body)
    _compare(ours, theirs)
    assert ours.headers[contract.HEADER_MODEL_VERSION] == "1"
    assert ours.headers[contract.HEADER_INSTANCE_ID]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_match(case: str, replica: Any, mlflow_serve: Any) -> None:
    ct, body = BAD[case]
    theirs = _post(mlflow_serve.url, ct, body)
    assert theirs.status_code in (400, 415), theirs.text  # the case really is a bad input
    ours = _post(replica.url, ct, body)
    _compare(ours, theirs)


@pytest.mark.parametrize("case", sorted(DIFFERENT))
def test_deliberate_differences(case: str, replica: Any, mlflow_serve: Any) -> None:
    ct, body, (their_status, their_json), (our_status, our_code) = DIFFERENT[case]
    theirs = _post(mlflow_serve.url, ct, body)
    assert theirs.status_code == their_status, theirs.text[:500]
    assert theirs.headers.get("content-type", "").startswith("application/json") == their_json, theirs.headers
    ours = _post(replica.url, ct, body)
    assert ours.status_code == our_status, ours.text[:500]
    assert ours.headers["content-type"] == "application/json"
    assert ours.json()["error_code"] == our_code and ours.json()["message"]


def test_fast_path_predicts_the_way_the_fixture_says(replica: Any) -> None:
    """The two `replica` variants really differ: one uses the linear kernel, one the estimator."""
    health = httpx.get(replica.url + contract.ROUTE_HEALTH, timeout=10).json()
    assert health["model"]["fast_path"] is True
    expected = "sklearn-linear-classifier" if replica.extra[contract.ENV_PREDICT_KERNELS] == "true" else None
    assert health["model"]["fast_kernel"] == expected


def test_get_routes_match(replica: Any, mlflow_serve: Any) -> None:
    for route in (contract.ROUTE_PING, contract.ROUTE_VERSION, contract.ROUTE_HEALTH):
        ours = httpx.get(replica.url + route, timeout=10)
        theirs = httpx.get(mlflow_serve.url + route, timeout=10)
        assert ours.status_code == theirs.status_code == 200, route
        if route != contract.ROUTE_HEALTH:  # ours says more there, on purpose
            assert ours.text == theirs.text, route
    assert httpx.get(replica.url + contract.ROUTE_INVOCATIONS, timeout=10).status_code == \
        httpx.get(mlflow_serve.url + contract.ROUTE_INVOCATIONS, timeout=10).status_code == 405


def test_body_over_limit_is_413_and_harmless(replica: Any, max_body_bytes: int) -> None:
    MAX_BODY_BYTES = max_body_bytes
    row = json.dumps(ROWS[0])
    n = MAX_BODY_BYTES // len(row) + 10
    big = ('{"dataframe_split": {"columns": ' + json.dumps(COLS) + ', "data": [' + ",".join([row] * n) + "]}}").encode()
    assert len(big) > MAX_BODY_BYTES
    r = _post(replica.url, JSON, big)
    assert r.status_code == 413
    assert r.json()["error_code"] and contract.ENV_MAX_BODY_BYTES in r.json()["message"]
    # Chunked upload (no Content-Length) is cut off at the limit too.
    r = httpx.post(replica.url + contract.ROUTE_INVOCATIONS, content=iter([big[:100_000]] * 4),
                   headers={"Content-Type": JSON}, timeout=30)
    assert r.status_code == 413
    ok = _post(replica.url, *GOOD["split-1"])
    assert ok.status_code == 200


def test_large_body_under_limit_matches(replica: Any, mlflow_serve: Any, max_body_bytes: int) -> None:
    # Over the size the replica parses on the event loop: parsed on the model thread.
    rows = [ROWS[i % 4] for i in range(5000)]
    body = j({"dataframe_split": {"columns": COLS, "data": rows}})
    assert 64 * 1024 < len(body) < max_body_bytes
    _compare(_post(replica.url, JSON, body), _post(mlflow_serve.url, JSON, body))


def test_concurrent_mix_is_batched_and_bad_requests_disturb_nobody(replica: Any, mlflow_serve: Any) -> None:
    """Good and bad requests in flight together: each gets exactly MLflow's answer, so no bad
    request spoils the micro-batch it lands next to, and batching keeps rows in order.

    Requests merge only when one queues while its process's model thread is busy: a matter of
    timing between the client's threads and the replica's processes (a CI run on a slow host
    saw a whole burst of 140 fast requests scored one by one with two processes). So the burst
    is sent again, a bounded number of times, until one of them was merged; every burst's
    answers are checked."""
    cases = [GOOD[k] for k in sorted(GOOD)] + [BAD[k] for k in sorted(BAD)]
    single = [(JSON, j({"dataframe_split": {"columns": COLS, "data": [[4 + i / 50, 3, 1 + i / 20, i / 40]]}}))
              for i in range(60)]
    requests = (cases + single) * 2
    expected = [_post(mlflow_serve.url, ct, body) for ct, body in cases + single]
    expected = expected * 2
    bursts: list[tuple[float, float]] = []  # per burst: fast requests, model calls
    for _ in range(MIXED_BURSTS):
        before = _batch_requests_sum(replica.url)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda cb: _post(replica.url, *cb), requests))
        for g, e in zip(got, expected, strict=True):
            _compare(g, e)
        after = _batch_requests_sum(replica.url)
        bursts.append((after[0] - before[0], after[1] - before[1]))
        assert bursts[-1][1] > 0  # model calls happened
        # Fewer model calls than fast requests: some were merged.
        if bursts[-1][0] > bursts[-1][1]:
            break
    assert bursts[-1][0] > bursts[-1][1], f"no burst was merged (fast requests, model calls): {bursts}"


MIXED_BURSTS = 5


def _batch_requests_sum(base: str) -> tuple[float, float]:
    """(sum, count) of the batch_requests histogram: requests merged, model calls made."""
    text = httpx.get(base + contract.ROUTE_METRICS, timeout=10).text
    vals = {}
    for line in text.splitlines():
        if line.startswith("mlserve_replica_batch_requests_sum") or line.startswith("mlserve_replica_batch_requests_count"):
            name, value = line.rsplit(" ", 1)
            vals[name] = float(value)
    return vals["mlserve_replica_batch_requests_sum"], vals["mlserve_replica_batch_requests_count"]


def test_request_id_is_echoed_and_logged_as_json(replica: Any) -> None:
    rid = "conformance-rid-42"
    r = httpx.post(replica.url + contract.ROUTE_INVOCATIONS, content=b"{not json",
                   headers={"Content-Type": JSON, contract.HEADER_REQUEST_ID: rid}, timeout=30)
    assert r.status_code == 400
    assert r.headers[contract.HEADER_REQUEST_ID] == rid
    generated = _post(replica.url, *GOOD["split-1"]).headers[contract.HEADER_REQUEST_ID]
    assert generated and generated != rid
    lines = [json.loads(ln) for ln in replica.log_path.read_text().splitlines() if ln.startswith("{")]
    assert lines, replica.tail()
    mine = [ln for ln in lines if ln.get("request_id") == rid]
    assert mine, replica.tail()
    assert mine[-1]["instance_id"] == r.headers[contract.HEADER_INSTANCE_ID]
    assert mine[-1]["status"] == 400 and mine[-1]["path"] == contract.ROUTE_INVOCATIONS
    # Every line is JSON with the instance id (MLflow's own loggers included).
    assert all("instance_id" in ln for ln in lines)
