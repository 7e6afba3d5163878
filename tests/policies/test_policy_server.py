"""The pack as the Pulumi CLI runs it: `python -m pulumi.policy <engine> policies`, spoken to over gRPC.

This is the one test that runs `policies/__main__.py`: in a child process, exactly as the
CLI's `pulumi-analyzer-policy-python` shim starts it (the pack prints its port, then serves
the Analyzer protocol). The test plays the engine: it sends the prod stack's declared
resources (from the mock run) one by one (`Analyze`, before each step) and all together
(`AnalyzeStack`, at the end), then broken variants, and reads the diagnostics back.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import declared_stack, to_rules
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from mockrun import DeclaredStack
from policies import rules

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 60


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    env = {**os.environ, "PULUMI_STACK": "prod", "PULUMI_PROJECT": "mlserve", "PULUMI_DRY_RUN": "true"}
    # The engine address is unused unless the pack logs through the engine; nothing listens there.
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:9", str(ROOT / "policies")],
        cwd=ROOT / "policies",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_DEADLINE_S
        line = ""
        while not line and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline().strip()
        assert line.isdigit(), (
            f"the pack printed no port (exit {proc.poll()}): {line!r} {proc.stderr.read() if proc.poll() is not None and proc.stderr else ''}"
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        grpc.channel_ready_future(channel).result(timeout=START_DEADLINE_S)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(props)
    return struct


def _resources(declared: DeclaredStack, change: dict[str, dict[str, Any]] | None = None) -> list[analyzer_pb2.AnalyzerResource]:
    """The declared resources as the engine sends them; `change` edits props (or `protect`) by name."""
    urns = {(r.name, r.type): r.urn for r in declared}
    parents = {r.urn: urns.get((r.parent, r.parent_type), "") for r in declared}
    out = []
    for resource in to_rules(declared):
        edits = dict((change or {}).get(resource.name, {}))
        protect = edits.pop("protect", resource.protect)
        props = {k: v for k, v in {**resource.props, **edits}.items() if v is not None}
        parent = parents[resource.urn]
        out.append(
            analyzer_pb2.AnalyzerResource(
                type=resource.type,
                properties=_struct(props),
                urn=resource.urn,
                name=resource.name,
                options=analyzer_pb2.AnalyzerResourceOptions(protect=protect),
                parent=parent,
                dependencies=[urns[(d, t)] for d in resource.dependencies for (n, t) in urns if n == d],
            )
        )
    return out


def _analyze_each(stub: analyzer_pb2_grpc.AnalyzerStub, resources: list[analyzer_pb2.AnalyzerResource]) -> list[Any]:
    found = []
    for r in resources:
        request = analyzer_pb2.AnalyzeRequest(type=r.type, properties=r.properties, urn=r.urn, name=r.name, options=r.options)
        found.extend(stub.Analyze(request, timeout=30).diagnostics)
    return found


def _analyze_stack(stub: analyzer_pb2_grpc.AnalyzerStub, resources: list[analyzer_pb2.AnalyzerResource]) -> list[Any]:
    return list(stub.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources), timeout=30).diagnostics)


def test_the_pack_serves_every_policy(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
    assert info.name == "mlserve-policies"
    assert sorted(p.name for p in info.policies) == sorted(r.name for r in rules.RULES)


def test_the_prod_stack_passes(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    resources = _resources(declared_stack("prod"))
    assert len(resources) >= 10
    assert [d.message for d in _analyze_each(analyzer, resources)] == []
    assert [d.message for d in _analyze_stack(analyzer, resources)] == []


def test_broken_resources_are_reported(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    declared = declared_stack("prod")
    volume = declared.of_type(rules.VOLUME)[0].name
    replica = declared.replicas()[0].name
    broken = _resources(
        declared,
        {
            "mysql": {"ports": [{"internal": 3306, "external": 3306}], "image": "mysql:latest"},
            volume: {"protect": False},
            replica: {"healthcheck": None, "deviceRequests": None, "gpus": None},
            "minio": {"envs": ["MINIO_ROOT_USER=admin", "MINIO_ROOT_PASSWORD=changeme"]},
        },
    )
    each = {(d.policyName, d.urn.rsplit("::", 1)[-1]) for d in _analyze_each(analyzer, broken)}
    assert {
        ("balancer-only-public-ports", "mysql"),
        ("pinned-images", "mysql"),
        ("protected-data-volumes", volume),
        ("replica-limits-and-healthcheck", replica),
    } <= each, each
    stack = _analyze_stack(analyzer, broken)
    assert {(d.policyName, d.urn.rsplit("::", 1)[-1]) for d in stack} == {
        ("no-literal-passwords", "minio"),
        ("gpu-replicas-request-gpu", replica),
    }
    for diagnostic in stack:
        assert diagnostic.enforcementLevel == analyzer_pb2.MANDATORY
        assert f"'{diagnostic.urn.rsplit('::', 1)[-1]}'" in diagnostic.message
