"""The Kubernetes components stay as light as the Docker ones, and the Docker path stays free of them."""

from __future__ import annotations

from tests.test_boundaries import HEAVY, imported_by, top


def test_kubernetes_components_carry_no_replica_server_dependency() -> None:
    loaded = imported_by("components.kubernetes.stack")
    assert "pulumi_kubernetes" in loaded and "app.contract" in loaded
    assert [m for m in loaded if top(m) in HEAVY or m.startswith("app.server")] == []


def test_settings_and_renderer_do_not_import_pulumi_kubernetes() -> None:
    loaded = imported_by("stackconfig.settings", "nginx.render")
    assert "pulumi_kubernetes" not in {top(m) for m in loaded}
