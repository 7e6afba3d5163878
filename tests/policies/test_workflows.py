"""The workflow linter of the test command passes on our workflows and fails on broken ones.

Each broken variant is the real workflow with one defect spliced in, so the test also
proves that the linter reads the file it is given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = ROOT / "scripts" / "lint_workflows.sh"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
MAIN = ROOT / ".github" / "workflows" / "pulumi.yml"


def lint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LINT), *map(str, files)], capture_output=True, text=True, timeout=120, check=False)


def test_our_workflows_pass() -> None:
    assert WORKFLOWS, "no workflow files found"
    result = lint()  # no arguments: every file under .github/workflows
    assert result.returncode == 0, result.stdout + result.stderr
    for workflow in WORKFLOWS:
        assert lint(workflow).returncode == 0


def _splice(old: str, new: str) -> str:
    text = MAIN.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {MAIN.name}: update the test"
    return text.replace(old, new, 1)


BROKEN = {
    # check-jsonschema: a misspelled key and a wrong type
    "unknown-step-key": ("      - uses: actions/checkout@v6\n", "      - usses: actions/checkout@v6\n"),
    "timeout-not-a-number": ("timeout-minutes: 30", "timeout-minutes: thirty"),
    "job-without-runner": ("    runs-on: ubuntu-24.04\n    timeout-minutes: 30\n", "    timeout-minutes: 30\n"),
    # zizmor: attacker-controlled text expanded inside a shell script
    "template-injection": (
        "      - name: bash scripts/test.sh (Debian 12)\n",
        '      - name: greet\n        run: echo "${{ github.event.pull_request.title }}"\n'
        "      - name: bash scripts/test.sh (Debian 12)\n",
    ),
    # zizmor: every permission granted to a job's token
    "write-all": ("    permissions:\n      contents: read\n", "    permissions: write-all\n"),
    # zizmor: a third-party action by a movable tag
    "unpinned-third-party": (
        "      - uses: actions/cache@v5\n",
        "      - uses: some-org/some-action@v1\n      - uses: actions/cache@v5\n",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_workflow_fails(name: str, tmp_path: Path) -> None:
    old, new = BROKEN[name]
    broken = tmp_path / "pulumi.yml"
    broken.write_text(_splice(old, new))
    result = lint(broken)
    assert result.returncode != 0, f"{name}: the linter accepted a broken workflow\n{result.stdout}{result.stderr}"
    assert "pulumi.yml" in result.stdout + result.stderr


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert lint(tmp_path / "nope.yml").returncode != 0
