"""Artifacts really are in the S3 bucket, run metadata really in MariaDB, and a restart of the
whole stack keeps the registry (as the Docker volumes would)."""

from __future__ import annotations

import boto3
import httpx
import pymysql
import pytest

from app import contract
from procstack import procs
from procstack.loadgen import iris_row_body
from stackconfig.names import ROLE_BUCKET, ROLE_MINIO, ROLE_MYSQL

from .helpers import info, service, settings_of_stack

pytestmark = pytest.mark.e2e


def _s3_keys(stack) -> list[str]:
    minio = service(stack, ROLE_MINIO)
    bucket_init = service(stack, ROLE_BUCKET)
    bucket = bucket_init.command[-1].split("/", 1)[1]
    s3 = boto3.client(
        "s3",
        endpoint_url=info(stack)["s3_endpoint"],
        aws_access_key_id=minio.env["MINIO_ROOT_USER"],
        aws_secret_access_key=minio.env["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _registry(stack) -> dict[str, object]:
    mysql = service(stack, ROLE_MYSQL)
    model = settings_of_stack(stack).default_group.model
    conn = pymysql.connect(
        host=info(stack)["mysql_address"],
        port=contract.MYSQL_PORT,
        user=mysql.env["MYSQL_USER"],
        password=mysql.env["MYSQL_PASSWORD"],
        database=mysql.env["MYSQL_DATABASE"],
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM runs")
            runs = cur.fetchone()[0]
            cur.execute("SELECT version, source FROM model_versions WHERE name = %s ORDER BY version", (model.name,))
            versions = cur.fetchall()
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s", (model.name, model.alias))
            alias = cur.fetchone()
    finally:
        conn.close()
    return {"runs": runs, "versions": versions, "alias": alias[0] if alias else None}


def _served_versions(stack) -> set[str]:
    out = set()
    for rep in info(stack)["replicas"].values():
        r = httpx.post(
            rep["url"] + contract.ROUTE_INVOCATIONS,
            content=iris_row_body(),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        out.add(r.headers[contract.HEADER_MODEL_VERSION])
    return out


def test_artifacts_in_s3_metadata_in_mariadb_and_both_survive_a_restart(stack):
    keys = _s3_keys(stack)
    model_dirs = [k.rsplit("/", 1)[0] for k in keys if k.endswith("/MLmodel")]
    assert model_dirs, f"no MLmodel object in the bucket; keys: {keys[:20]}"
    for d in model_dirs:  # the serialised model itself, not only its metadata
        assert any(k.startswith(d + "/model.") for k in keys), f"no model file under {d}: {keys[:20]}"

    before = _registry(stack)
    assert before["runs"] >= 1 and before["versions"], before
    # One artifact directory per registered version (the promotion test registered a second).
    assert len(model_dirs) >= len(before["versions"]) >= 2, (model_dirs, before)
    assert before["alias"] is not None
    assert _served_versions(stack) == {str(before["alias"])}

    running = {n: r["pid"] for n, r in stack.status()["processes"].items() if r["state"] == "running"}
    assert len(running) >= 6, running
    stack.down()  # stop everything; data stays
    assert not [n for n, pid in running.items() if procs.alive(pid)], "processes survived `down`"
    stack.up()

    after = _registry(stack)
    assert after == before, f"registry changed across the restart: {before} -> {after}"
    assert sorted(_s3_keys(stack)) == sorted(keys)
    # The replicas load the promoted version from the restored artifact store; the trainer
    # (only-if-empty) registered nothing new.
    assert _served_versions(stack) == {str(before["alias"])}
