"""Names derived from the stack config that the program, the nginx renderer and the tooling share.

Container roles: every container the program declares carries the label `LABEL_ROLE` with one
of `ROLES`. Tooling (the mock harness, the policy rules, the process and engine stand-ins)
classifies containers by that label, never by name patterns, images or commands.
"""

from __future__ import annotations

import re

from app import contract

PROJECT = "mlserve"

LABEL_STACK = f"{PROJECT}.stack"
LABEL_ROLE = f"{PROJECT}.role"

ROLE_MYSQL = "mysql"
ROLE_MINIO = "minio"
ROLE_BUCKET = "minio-bucket"  # one-shot: creates the artifact bucket
ROLE_DB_UPGRADE = "mlflow-db-upgrade"  # one-shot: migrates MLflow's schema before a new server starts
ROLE_MLFLOW = "mlflow"
ROLE_TRAINER = "trainer"  # one-shot: trains and registers the demo model
ROLE_REPLICA = "replica"
ROLE_BALANCER = "balancer"
# In start order: a role's containers need the earlier roles' containers.
ROLES = (ROLE_MYSQL, ROLE_MINIO, ROLE_BUCKET, ROLE_DB_UPGRADE, ROLE_MLFLOW, ROLE_TRAINER, ROLE_REPLICA, ROLE_BALANCER)
ONE_SHOT_ROLES = (ROLE_BUCKET, ROLE_DB_UPGRADE, ROLE_TRAINER)
# Kubernetes target: the labels that tell replica groups (and weights within a group) apart.
LABEL_GROUP = f"{PROJECT}.group"
LABEL_WEIGHT = f"{PROJECT}.weight"

# The private MLflow URL every container on the network uses (replicas, trainer).
MLFLOW_PRIVATE_URL = f"http://{contract.MLFLOW_HOST}:{contract.MLFLOW_PORT}"


def container_name(stack: str, resource: str) -> str:
    """Docker-level container name, unique per host across stacks."""
    return f"{PROJECT}-{stack}-{resource}"


def network_name(stack: str) -> str:
    return f"{PROJECT}-{stack}"


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as a Kubernetes object name (DNS label): lowercase letters, digits and '-', at most `limit`."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].rstrip("-") or "x"


def namespace_name(stack: str) -> str:
    """The namespace the Kubernetes target creates when config names none."""
    return dns_label(f"{PROJECT}-{stack}")


def service_host(service: str, namespace: str, cluster_domain: str) -> str:
    """Fully qualified name of a Kubernetes Service: nginx's resolver ignores search domains."""
    return f"{service}.{namespace}.svc.{cluster_domain}"


# The replicas of `replicas`/`weights` form the default group; other groups are named in config.
# The default group keeps the shortest names, so stacks made before groups existed keep theirs.
DEFAULT_GROUP = "default"


def _group_prefix(group: str) -> str:
    return "replica" if group == DEFAULT_GROUP else f"replica-{group}"


def replica_resource(index: int, group: str = DEFAULT_GROUP) -> str:
    """Pulumi logical name (and network alias, and hostname) of replica `index` of a group."""
    return f"{_group_prefix(group)}-{index}"


def weight_alias(weight: int, group: str = DEFAULT_GROUP) -> str:
    """Name shared by every replica of one weight in one group (a Docker network alias, a
    Kubernetes headless Service); nginx's upstream resolves it at run time."""
    return f"{_group_prefix(group)}-w{weight}"


def upstream_name(group: str) -> str:
    """nginx upstream of one replica group."""
    return f"replicas_{group}"
