"""The replica image's Dockerfiles and requirements, against the contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app import contract

APP = Path(__file__).resolve().parents[2] / "app"


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = (APP / dockerfile).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_replica_dockerfile_matches_the_contract() -> None:
    ins = _instructions(contract.REPLICA_DOCKERFILE)
    get = lambda k: [v for w, v in ins if w == k]  # noqa: E731
    assert f"{contract.BUILD_ARG_VARIANT}=cpu" in get("ARG")
    assert get("WORKDIR") == [contract.IMAGE_WORKDIR]
    assert f"{contract.IMAGE_WORKDIR}/app" in get("COPY")[-1]
    assert get("EXPOSE") == [str(contract.REPLICA_PORT)]
    assert get("STOPSIGNAL") == ["SIGTERM"]
    user = get("USER")[-1]
    assert not user.startswith(("root", "0")), user
    assert json.loads(get("CMD")[-1]) == ["python", "-m", contract.REPLICA_MODULE]  # exec form
    hc = get("HEALTHCHECK")[-1]
    assert "app.server.probe" in hc and "CMD [" in hc
    run = " ".join(get("RUN"))
    assert "requirements.txt" in run and "requirements-cuda.txt" in run


def test_mlflow_dockerfile_installs_pinned_drivers() -> None:
    ins = _instructions(contract.TRACKING_DOCKERFILE)
    run = " ".join(v for w, v in ins if w == "RUN")
    for pkg in ("mlflow", "pymysql", "boto3"):
        assert pkg in run
    assert [v for w, v in ins if w == "EXPOSE"] == [str(contract.MLFLOW_PORT)]
    assert f"127.0.0.1:{contract.MLFLOW_PORT}/health" in " ".join(v for w, v in ins if w == "HEALTHCHECK")
    assert [v for w, v in ins if w == "USER"][-1].split(":")[0] != "0"


def test_requirements_are_pinned_and_torch_is_opt_in() -> None:
    reqs = [ln.strip() for ln in (APP / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    for ln in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[\w.]+", ln), ln
    assert not any(ln.startswith("torch") for ln in reqs)
    cuda = [ln.strip() for ln in (APP / "requirements-cuda.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert cuda and all("==" in ln for ln in cuda) and any(ln.startswith("torch==") for ln in cuda)
