"""The mock harness itself, on a tiny throwaway program (independent of ours)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from mockrun import CONTAINER_TYPE, attempt, run_program

PROGRAM = textwrap.dedent(
    """
    import pulumi
    import pulumi_docker as docker
    import pulumi_random as random

    cfg = pulumi.Config()
    count = cfg.require_int("count")
    if count < 0:
        raise ValueError("count: must not be negative")

    class Box(pulumi.ComponentResource):
        def __init__(self, name, opts=None):
            super().__init__("t:stack:Box", name, None, opts)
            self.pw = random.RandomPassword(f"{name}-pw", length=8, opts=pulumi.ResourceOptions(parent=self))
            prev = None
            self.cs = []
            for i in range(count):
                prev = docker.Container(
                    f"c-{i}",
                    docker.ContainerArgs(image="busybox:1", envs=[self.pw.result.apply(lambda p: f"PW={p}"), "A=1"],
                                         memory=512),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[prev] if prev else None),
                )
                self.cs.append(prev)
            self.register_outputs({"n": count})

    box = Box("box")
    pulumi.export("pw", box.pw.result)
    pulumi.export("names", [c.name for c in box.cs])
    """
)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: t\nruntime: python\n")
    (tmp_path / "Pulumi.s.yaml").write_text("config:\n  t:count: 2\n")
    (tmp_path / "__main__.py").write_text(PROGRAM)
    return tmp_path


def test_records_resources_parents_dependencies_and_secrets(project: Path) -> None:
    declared = run_program("s", project_root=project)
    containers = declared.of_type(CONTAINER_TYPE)
    assert [c.name for c in containers] == ["c-0", "c-1"]
    first, second = containers
    assert first.parent == "box" and first.parent_type == "t:stack:Box"
    assert "c-0" in second.depends_on
    assert first.inputs["memory"] == 512 and isinstance(first.inputs["memory"], int)
    # One secret element makes the whole list secret on the wire: the harness says so.
    assert first.is_secret("envs")
    assert first.inputs["envs"] == ["PW=mock-password-box-pw", "A=1"]
    assert declared.outputs["pw"].secret and declared.output("pw") == "mock-password-box-pw"
    assert declared.output("names") == ["c-0", "c-1"]
    assert declared.by_name("box").component_outputs == {"n": 2}


def test_overrides_and_repeated_runs_are_independent(project: Path) -> None:
    assert len(run_program("s", {"count": 5}, project_root=project).of_type(CONTAINER_TYPE)) == 5
    assert len(run_program("s", project_root=project).of_type(CONTAINER_TYPE)) == 2


def test_program_errors_are_returned_or_raised(project: Path) -> None:
    result = attempt("s", {"count": -1}, project_root=project)
    assert isinstance(result.error, ValueError) and len(result.declared) == 0
    with pytest.raises(ValueError, match="count"):
        run_program("s", {"count": -1}, project_root=project)
    # ... and the runtime is usable again afterwards.
    assert len(run_program("s", project_root=project).of_type(CONTAINER_TYPE)) == 2


def test_runs_after_asyncio_run_left_the_thread_without_a_loop(project: Path) -> None:
    # The whole suite runs server tests (asyncio.run) before these: that must not matter.
    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    with pytest.raises(RuntimeError):
        asyncio.get_event_loop()  # the state the harness has to cope with
    assert run_program("s", project_root=project).resources
