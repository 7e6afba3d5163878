"""Replay payload logs: send what was asked again and report where the answers differ.

The replicas' payload logs (app/server/payloads.py) are JSON lines under
`payload-logs/<model>/<group>/<version>/` of the artifact store, read here through the MLflow
server's artifact proxy (no storage credentials needed). Two ways to replay them:

    # against the running stack (or any URL serving /invocations): do answers still match the logs?
    python -m app.replay --model iris-classifier --against http://127.0.0.1:8080 [--api-key KEY]

    # against two registered versions, loaded here with the replica's own loader: where do they differ?
    python -m app.replay --model iris-classifier --versions 1 3

Common options: --tracking-uri (default $MLFLOW_TRACKING_URI), --group (default: every group),
--version (logs of one model version only), --limit (records). On the stack's network the
replica image runs it (`docker run --rm --network mlserve-<stack> <replica image> python -m
app.replay ...`); the local process stack resolves `mlflow` through /etc/hosts.

Output: one line per differing request (up to --show), then one JSON line: records read,
compared, agreeing, differing, errors (no answer to compare), and the first differences.
Answers are compared as the shadow replicas compare them (app/server/shadow.py): predictions
equal, floats within a relative 1e-6; two refusals with the same error code agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from app import contract
from app.server.model import Answer
from app.server.shadow import AGREE, DISAGREE, judge

LIST_TIMEOUT_S = 30.0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=LIST_TIMEOUT_S) as response:  # noqa: S310 - the tracking server the user names
        data: bytes = response.read()
        return data


def list_files(tracking_uri: str, path: str) -> Iterator[str]:
    """Every file under `path` of the proxied artifact store, depth first, in name order."""
    query = urllib.parse.urlencode({"path": path})
    listing = json.loads(_get(f"{tracking_uri.rstrip('/')}{contract.MLFLOW_ARTIFACTS_API}?{query}"))
    for entry in sorted(listing.get("files", []), key=lambda f: f["path"]):
        child = f"{path}/{entry['path']}"
        if entry.get("is_dir"):
            yield from list_files(tracking_uri, child)
        else:
            yield child


def read_records(tracking_uri: str, model: str, group: str | None, version: str | None, limit: int) -> list[dict[str, Any]]:
    root = f"{contract.PAYLOAD_LOG_PREFIX}/{model}"
    if group:
        root += f"/{group}"
        if version:
            root += f"/{version}"
    records: list[dict[str, Any]] = []
    for path in list_files(tracking_uri, root):
        if not path.endswith(".jsonl"):
            continue
        data = _get(f"{tracking_uri.rstrip('/')}{contract.MLFLOW_ARTIFACTS_API}/{urllib.parse.quote(path)}")
        for line in data.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if version and str(record.get("version")) != version:
                continue
            records.append(record)
            if len(records) >= limit:
                return records
    return records


def logged_answer(record: dict[str, Any]) -> Answer:
    return Answer(int(record["status"]), str(record["response"]).encode())


def post(url: str, record: dict[str, Any], api_key: str | None) -> Answer:
    headers = {"Content-Type": record.get("content_type") or "application/json",
               contract.HEADER_REQUEST_ID: f"replay-{record.get('request_id', '')}"[:200]}
    if api_key:
        headers[contract.HEADER_AUTHORIZATION] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + contract.ROUTE_INVOCATIONS, data=str(record["request"]).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=LIST_TIMEOUT_S) as response:  # noqa: S310 - the URL the user names
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read())


def compare(records: list[dict[str, Any]], first: Any, second: Any, show: int) -> dict[str, Any]:
    """Score every record both ways; count agreements and keep the first differences."""
    summary: dict[str, Any] = {"records": len(records), "compared": 0, "agree": 0, "disagree": 0, "errors": 0, "differences": []}
    for record in records:
        try:
            a, b = first(record), second(record)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            summary["errors"] += 1
            print(f"error {record.get('request_id')}: {exc!r}", file=sys.stderr)
            continue
        outcome, _, _ = judge(a, b)
        summary["compared"] += 1
        if outcome == AGREE:
            summary["agree"] += 1
            continue
        if outcome == DISAGREE:
            summary["disagree"] += 1
        else:
            summary["errors"] += 1
        if len(summary["differences"]) < show:
            difference = {"request_id": record.get("request_id"), "group": record.get("group"), "version": record.get("version"),
                          "request": record["request"][:500], "first": f"{a.status} {a.body[:300].decode(errors='replace')}",
                          "second": f"{b.status} {b.body[:300].decode(errors='replace')}"}
            summary["differences"].append(difference)
            print(f"differs {difference['request_id']}: {difference['first']}  vs  {difference['second']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=os.environ.get(contract.ENV_TRACKING_URI))
    parser.add_argument("--model", default=os.environ.get(contract.ENV_MODEL_NAME), help="registered model name")
    parser.add_argument("--group", default=None, help="replica group whose logs to replay (default: all)")
    parser.add_argument("--version", default=None, help="logs of this model version only (needs --group)")
    parser.add_argument("--limit", type=int, default=10_000, help="records to replay at most")
    parser.add_argument("--show", type=int, default=20, help="differences to print and keep in the summary")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--against", metavar="URL", help="replay against this entry (the running stack) and compare with the logged answers")
    target.add_argument("--versions", nargs=2, metavar=("A", "B"), help="replay against two registered versions loaded here")
    parser.add_argument("--api-key", default=os.environ.get("MLSERVE_API_KEY"), help="key for --against (or $MLSERVE_API_KEY)")
    args = parser.parse_args(argv)
    if not args.tracking_uri or not args.model:
        parser.error(f"--tracking-uri and --model are needed (or {contract.ENV_TRACKING_URI} and {contract.ENV_MODEL_NAME})")
    if args.version and not args.group:
        parser.error("--version needs --group")

    records = read_records(args.tracking_uri, args.model, args.group, args.version, args.limit)
    if args.against:
        summary = compare(records, logged_answer, lambda r: post(args.against, r, args.api_key), args.show)
        summary["mode"] = f"logged answers vs {args.against}"
    else:
        import mlflow

        from app.server.model import load

        mlflow.set_tracking_uri(args.tracking_uri)
        # MLflow's own scoring path on each version: what a replica answers, fast path or not.
        first, second = (load(args.model, v, "replay", contract.DEVICE_CPU, predict_kernels=False) for v in args.versions)
        try:
            summary = compare(records,
                              lambda r: first.score_reference(str(r["request"]).encode(), r.get("content_type")),
                              lambda r: second.score_reference(str(r["request"]).encode(), r.get("content_type")), args.show)
        finally:
            for loaded in (first, second):
                if loaded.local_dir:
                    shutil.rmtree(loaded.local_dir, ignore_errors=True)
        summary["mode"] = f"version {args.versions[0]} vs version {args.versions[1]}"
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
