#!/usr/bin/env bash
# The whole test suite: set-up, static checks, then every test (unit, real-process,
# end-to-end on the local stack). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== mypy"
mypy
echo "== workflow lint"
bash scripts/lint_workflows.sh
echo "== pytest"
python -m pytest "$@"
