#!/usr/bin/env bash
# Sets everything up and brings the dev stack up locally as real processes on loopback
# (MariaDB, S3 stand-in, MLflow, trainer, replicas, nginx), then prints the entry URL.
# Extra arguments go to `python -m procstack up`, e.g. --stack prod or --set replicas=3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m procstack up "$@"
