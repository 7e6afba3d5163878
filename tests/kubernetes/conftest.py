"""Fixtures of the Kubernetes target's tests: the example cluster stack and its variants, each run
once per session under mocks, with the external stores' secrets handed over as secrets."""

from __future__ import annotations

import pytest

from mockrun import DeclaredStack

from .helpers import CPU_IN_CLUSTER, HPA, IN_CLUSTER, SECRETS, declared


@pytest.fixture(scope="session")
def cluster() -> DeclaredStack:
    """Pulumi.cluster.yaml as shipped: GPU replicas, external stores, a LoadBalancer."""
    return declared("cluster", {}, SECRETS)


@pytest.fixture(scope="session")
def in_cluster() -> DeclaredStack:
    """The example with inClusterStores: MySQL and MinIO as StatefulSets."""
    return declared("cluster", IN_CLUSTER)


@pytest.fixture(scope="session")
def autoscaled() -> DeclaredStack:
    """The example with an autoscaler per replica group."""
    return declared("cluster", HPA, SECRETS)


@pytest.fixture(scope="session")
def cpu_only() -> DeclaredStack:
    """CPU replicas, in-cluster stores, an existing namespace and a pull secret."""
    return declared("cluster", CPU_IN_CLUSTER)


@pytest.fixture(scope="session", params=["cluster", "in_cluster", "autoscaled", "cpu_only"])
def any_cluster(request: pytest.FixtureRequest) -> DeclaredStack:
    stack: DeclaredStack = request.getfixturevalue(request.param)
    return stack

