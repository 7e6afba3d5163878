#!/usr/bin/env python
"""Stand-in for the two `mc` (MinIO client) commands the program runs, and nothing else:

    mc ready ALIAS                         exit 0 when the S3 server of ALIAS answers HTTP
    mc mb [--ignore-existing|-p] ALIAS/BUCKET   create a bucket (already there: fine with the flag)

ALIAS comes from MC_HOST_<ALIAS>=http://KEY:SECRET@HOST:PORT as with mc; `local` without such a
variable is http://localhost:9000 (mc's built-in alias, which the MinIO image's healthcheck uses).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit


def alias_endpoint(alias: str) -> tuple[str, str | None, str | None]:
    url = os.environ.get(f"MC_HOST_{alias}")
    if url is None:
        if alias == "local":
            return "http://localhost:9000", None, None
        raise SystemExit(f"mc: no MC_HOST_{alias} in the environment")
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    key = unquote(parts.username) if parts.username else None
    secret = unquote(parts.password) if parts.password else None
    return endpoint, key, secret


def ready(alias: str) -> int:
    endpoint, _, _ = alias_endpoint(alias)
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=3) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:  # an S3 error answer still means the server is up
        status = exc.code
    except OSError as exc:
        print(f"mc: {endpoint} not ready: {exc}", file=sys.stderr)
        return 1
    return 0 if status < 500 else 1


def make_bucket(target: str, ignore_existing: bool) -> int:
    import boto3  # type: ignore[import-untyped]
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    alias, _, bucket = target.partition("/")
    if not bucket:
        raise SystemExit(f"mc: expected ALIAS/BUCKET, got {target!r}")
    endpoint, key, secret = alias_endpoint(alias)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if ignore_existing and code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            print(f"Bucket `{target}` already exists.")
            return 0
        print(f"mc: <ERROR> Unable to make bucket `{target}`: {exc}", file=sys.stderr)
        return 1
    print(f"Bucket created successfully `{target}`.")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "ready":
        return ready(argv[1])
    if argv and argv[0] == "mb":
        flags = {a for a in argv[1:] if a.startswith("-")}
        targets = [a for a in argv[1:] if not a.startswith("-")]
        unknown = flags - {"--ignore-existing", "-p"}
        if unknown or len(targets) != 1:
            raise SystemExit(f"mc stand-in: unsupported arguments {argv}")
        return make_bucket(targets[0], ignore_existing=bool(flags))
    raise SystemExit(f"mc stand-in: only `ready ALIAS` and `mb [--ignore-existing] ALIAS/BUCKET`, got {argv}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
