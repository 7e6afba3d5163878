#!/usr/bin/env bash
# Lints GitHub workflow files (default: .github/workflows/*.yml), offline:
#   1. check-jsonschema against the GitHub workflow schema it vendors (structure, keys, types);
#   2. zizmor (expressions, permissions, template injection, credential leaks, action pinning
#      per .github/zizmor.yml).
# actionlint itself has no installable build here (its PyPI wrapper downloads from GitHub).
# Exits non-zero on any finding. Usage: scripts/lint_workflows.sh [FILE...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if (($#)); then
  files=("$@")
else
  shopt -s nullglob
  files=("$root"/.github/workflows/*.yml "$root"/.github/workflows/*.yaml)
  shopt -u nullglob
fi
if ((${#files[@]} == 0)); then
  echo "lint_workflows: no workflow files to lint" >&2
  exit 1
fi
bin="$root/.venv/bin"
[ -x "$bin/zizmor" ] || bin="$(dirname "$(command -v zizmor)")"
"$bin/check-jsonschema" --builtin-schema vendor.github-workflows "${files[@]}"
"$bin/zizmor" --offline --no-progress --config "$root/.github/zizmor.yml" "${files[@]}"
