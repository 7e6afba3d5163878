"""The mlserve CrossGuard policy pack: `pulumi preview --policy-pack policies`.

The rules live in `policies/rules.py` (pure functions) and their CrossGuard wrappers in
`policies/pack.py`. Constructing `PolicyPack` starts the analyzer's gRPC server and never
returns, so nothing but the Pulumi CLI runs this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pulumi_policy import EnforcementLevel, PolicyPack

# The CLI runs this file from the pack's directory; the `policies` package lives one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.pack import build_policies

PolicyPack(
    name="mlserve-policies",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=build_policies(),
)
