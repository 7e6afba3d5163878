"""What the replica's unit tests share."""

from __future__ import annotations

from pathlib import Path

from app import contract

ROOT = Path(__file__).resolve().parents[3]
# The variables a replica needs; nothing listens at the tracking URI.
BASE_ENV = {contract.ENV_TRACKING_URI: "http://127.0.0.1:1", contract.ENV_MODEL_NAME: "m",
            contract.ENV_MODEL_ALIAS: "champion"}
