#!/usr/bin/env bash
# The whole test suite: set-up, static checks, then every test (unit, real-process,
# end-to-end on the local stack and on a Docker engine). `.ci/run` calls exactly this.
#
#   bash scripts/test.sh            everything (installs Debian packages when missing: root or sudo)
#   bash scripts/test.sh --fast     static checks, unit and mock tests only: no root, no services
#
# Further arguments go to pytest: to both of its runs (the tests that start no server, then the
# rest), or to one run when they pick tests by marker (-m).
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

static_checks() {
  echo "== ruff"
  ruff check .
  echo "== mypy"
  mypy
  echo "== workflow lint"
  bash scripts/lint_workflows.sh
}

if ((fast)); then
  static_checks
  echo "== pytest"
  # `live` tests start real servers, `e2e` ones the whole process stack (root), `engine` ones
  # the stack on a Docker engine.
  exec python -m pytest -m "not live and not e2e and not engine" "$@"
fi

echo "== docker engine"
# The engine tests (tests/engine) need a Docker engine: start one when none answers (installing
# Debian's docker.io when missing), and stop only the one started here.
engine_started=$(bash scripts/engine.sh start | sed -n 's/^started //p')
# The images the engine tests need are built beside the static checks and the tests that start
# no server: from a fresh machine that build waits on PyPI and Debian's mirror for minutes and
# uses little CPU, and nothing beside it measures time. Tests that start servers begin once it
# is done. Its log is printed only when it fails (the engine tests then build again, and fail
# with the build's own error if it fails again).
images_log=$(mktemp /tmp/mlserve-engine-images.XXXXXX.log)
python -m enginestack images --app-cache >"$images_log" 2>&1 &
images_pid=$!
cleanup() {
  if kill -0 "$images_pid" 2>/dev/null; then
    kill "$images_pid" 2>/dev/null || true
    wait "$images_pid" 2>/dev/null || true
  fi
  rm -f "$images_log"
  if [ -n "$engine_started" ]; then
    bash scripts/engine.sh stop "$engine_started"
  fi
}
trap cleanup EXIT

static_checks

# A marker expression of the caller's (-m) picks the tests itself: one run, as asked.
for arg in "$@"; do
  if [ "$arg" = "-m" ] || [[ "$arg" == -m?* ]]; then
    wait "$images_pid" || true
    echo "== pytest"
    python -m pytest --durations=25 "$@"
    exit $?
  fi
done
# Two runs: first the tests that start no server (beside the image build), then the rest.
# pytest's exit code 5 means nothing selected (arguments that name one kind of test only).
echo "== pytest: tests that start no server"
quick=0
python -m pytest -m "not live and not e2e and not engine" "$@" || quick=$?
echo "== engine images"
images_start=$SECONDS
if ! wait "$images_pid"; then
  echo "engine images: the build beside the tests failed; its log:"
  tail -n 40 "$images_log"
fi
echo "engine images: ready after waiting $((SECONDS - images_start)) s more"
echo "== pytest: tests that start servers (live), the process stack (e2e) and the engine stack"
# The slowest tests in every log: the whole run has a time budget (README, "Time and disk in CI").
rest=0
python -m pytest -m "live or e2e or engine" --durations=25 "$@" || rest=$?
for code in "$quick" "$rest"; do
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then
    echo "pytest: failed (tests that start no server: exit $quick; the rest: exit $rest)"
    exit "$code"
  fi
done
if [ "$quick" -eq 5 ] && [ "$rest" -eq 5 ]; then
  exit 5
fi
