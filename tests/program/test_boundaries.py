"""The program stays light: no replica-server dependency behind components/ or nginx/."""

from __future__ import annotations

import json
import subprocess
import sys

from mockrun import PROJECT_ROOT

HEAVY = ("mlflow", "starlette", "uvicorn", "sklearn", "orjson", "prometheus_client", "app.server")


def test_program_modules_import_only_the_contract_from_app() -> None:
    code = (
        "import json, sys; import components.stack, nginx.render, mockrun; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=60)
    modules = json.loads(done.stdout)
    assert "components.stack" in modules and "app.contract" in modules
    loaded = [m for m in modules if m.split(".")[0] in HEAVY or m.startswith("app.server")]
    assert loaded == []
