#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages when missing, then the
# project's virtualenv from the pinned requirements. Run first by run-local.sh and test.sh.
# `--python-only` skips the Debian packages (the fast tests need none; no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/apt.sh
source scripts/apt.sh
python_only=0
[ "${1:-}" = "--python-only" ] && python_only=1

# Debian packages: the stand-ins of the local stack (MariaDB), the load generator (wrk),
# Debian's nginx (only its stub_status module is used, to syntax-check the status snippet),
# and Python's venv support.
apt_packages=(mariadb-server wrk nginx-light)
((python_only)) && apt_packages=()
python3 -c "import ensurepip" 2>/dev/null || apt_packages+=(python3-venv python3-pip)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "setup: installing Debian packages: ${missing[*]}"
  # The local stack runs private instances on the ports of the packages' own services.
  apt_install_quiet "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat requirements-dev.txt app/requirements.txt policies/requirements.txt app/requirements.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade "pip==$(grep '^pip==' app/requirements.lock | cut -d= -f3)"
  .venv/bin/python -m pip install -q -r requirements-dev.txt -c app/requirements.lock
  rm -f .venv/.installed-*
  touch "$stamp"
fi
