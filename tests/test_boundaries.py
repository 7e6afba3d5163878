"""The boundaries docs/architecture.md draws, enforced on what each package really imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mockrun import PROJECT_ROOT

HEAVY = ("mlflow", "starlette", "uvicorn", "sklearn", "orjson", "prometheus_client")


def imported_by(*modules: str) -> list[str]:
    """Every module loaded, in a fresh interpreter, by importing `modules`."""
    code = f"import json, sys; import {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=60)
    loaded: list[str] = json.loads(done.stdout)
    assert all(m in loaded for m in modules), "the probe did not import what it names"
    return loaded


def top(module: str) -> str:
    return module.split(".")[0]


def test_program_modules_import_only_the_contract_from_app() -> None:
    """components/ and nginx/ carry no replica-server dependency: only app.contract is shared."""
    loaded = imported_by("components.stack", "nginx.render", "mockrun")
    assert "app.contract" in loaded
    assert [m for m in loaded if top(m) in HEAVY or m.startswith("app.server")] == []


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # Settings sit below everything that consumes them; they read pulumi.Config only in load().
        ("stackconfig.settings", ("components", "nginx", "mockrun", "procstack", "policies", "pulumi", "pulumi_docker")),
        ("stackconfig.names", ("components", "nginx", "mockrun", "procstack", "policies", "pulumi")),
        # The renderer is a pure function of settings: no Pulumi, no components.
        ("nginx.render", ("components", "mockrun", "procstack", "pulumi", "pulumi_docker")),
        # The policy rules judge plain resource descriptions: no program, no Pulumi SDK.
        ("policies.rules", ("components", "nginx", "mockrun", "procstack", "pulumi", "pulumi_policy")),
    ],
)
def test_layer_imports_nothing_above_it(module: str, forbidden: tuple[str, ...]) -> None:
    loaded = imported_by(module)
    assert sorted({top(m) for m in loaded} & set(forbidden)) == []


def test_the_replica_package_imports_no_infrastructure_code() -> None:
    """The replica image carries app/ only."""
    loaded = imported_by("app.server.asgi", "app.trainer")
    assert sorted({top(m) for m in loaded} & {"components", "stackconfig", "nginx", "mockrun", "procstack", "pulumi"}) == []


def test_the_health_probe_imports_no_http_library() -> None:
    """Docker runs the probe as a process in the replica's cgroup every healthIntervalSeconds:
    urllib.request (http.client, email, ssl) made each run cost ~130 ms of the replica's CPU,
    and importing `socket` (selectors, enum) alone ~25 ms."""
    loaded = imported_by("app.server.probe")
    costly = ("urllib", "http", "email", "ssl", "socket", "selectors", "asyncio", *HEAVY)
    assert [m for m in loaded if top(m) in costly] == []
