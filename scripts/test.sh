#!/usr/bin/env bash
# The whole test suite: set-up, static checks, then every test (unit, real-process,
# end-to-end on the local stack and on a Docker engine). `.ci/run` calls exactly this.
#
#   bash scripts/test.sh            everything (installs Debian packages when missing: root or sudo)
#   bash scripts/test.sh --fast     static checks, unit and mock tests only: no root, no services
#
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
if ((fast)); then
  bash scripts/setup.sh --python-only
else
  bash scripts/setup.sh
fi
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== mypy"
mypy
echo "== workflow lint"
bash scripts/lint_workflows.sh
echo "== pytest"
if ((fast)); then
  # `live` tests start real servers, `e2e` ones the whole process stack (root), `engine` ones
  # the stack on a Docker engine.
  exec python -m pytest -m "not live and not e2e and not engine" "$@"
fi
echo "== docker engine"
# The engine tests (tests/engine) need a Docker engine: start one when none answers (installing
# Debian's docker.io when missing), and stop only the one started here.
engine_started=$(bash scripts/engine.sh start | sed -n 's/^started //p')
if [ -n "$engine_started" ]; then
  trap 'bash scripts/engine.sh stop "$engine_started"' EXIT
fi
# The slowest tests in every log: the whole run has a time budget (README, "Time and disk in CI").
python -m pytest --durations=25 "$@"
