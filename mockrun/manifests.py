"""The Kubernetes objects a stack declares, as plain manifests, from its mocked resources.

pulumi-kubernetes cannot render manifests under mocks (`render_yaml_to_directory` needs the
provider plugin), so the manifests are the inputs the program sent: camelCase, with `apiVersion`
and `kind` filled in by the SDK, whole floats turned back into ints and secrets unwrapped by
the harness. The tests validate them against Kubernetes' schemas (kubernetes-validate) and
our own semantic checks.

    python -m mockrun.manifests cluster [--set key=value ...] [--secret key=value ...] > cluster.yaml

prints them as one YAML stream (for `kubectl apply --dry-run=server -f cluster.yaml` against a
real cluster, say). Secret values in it are the mocks' stand-ins unless given with --secret.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

from .harness import DeclaredStack, run_program


def manifests(stack: DeclaredStack) -> list[dict[str, Any]]:
    """One plain manifest per Kubernetes object the stack declares (deep copies)."""
    found = []
    for resource in stack.kubernetes():
        manifest = copy.deepcopy(resource.inputs)
        assert manifest.get("apiVersion") and manifest.get("kind"), f"{resource.name}: no apiVersion/kind in its inputs"
        found.append(manifest)
    return found


def _pairs(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m mockrun.manifests", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (JSON or a string)")
    parser.add_argument("--secret", action="append", default=[], metavar="KEY=VALUE", help="a config override set as a secret")
    args = parser.parse_args(argv)
    declared = run_program(args.stack, _pairs(args.set), secrets=_pairs(args.secret))
    yaml.safe_dump_all(manifests(declared), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
