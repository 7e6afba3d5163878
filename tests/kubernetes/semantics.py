"""Checks on a set of Kubernetes manifests that no schema makes, each one a function from the
manifests to a list of problems (empty: fine). The API server would reject some of these at
apply time (a selector that does not match its template, a GPU request other than its limit,
maxSurge and maxUnavailable both 0, an autoscaler's minimum above its maximum, a PDB with both
bounds); the others are our own rules (every replica Service selects exactly one group, GPUs
only in limits, no credential outside a Secret, the shutdown arithmetic, no replica count under
an autoscaler). test_manifests.py runs each on the declared stacks and on a broken copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

Manifest = dict[str, Any]
Check = Callable[[list[Manifest]], list[str]]

WORKLOADS = ("Deployment", "StatefulSet", "Job")
EXTENDED_PREFIXES = ("nvidia.com/",)
# Env names whose value is a credential (the policy pack's rule on the Docker target, here as well).
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|_KEY_ID$|^MC_HOST_")
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:\s]+:[^/@\s]+@")


def name_of(m: Manifest) -> str:
    return f"{m['kind']}/{m['metadata']['name']}"


def of_kind(manifests: list[Manifest], *kinds: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in kinds]


def template(m: Manifest) -> Manifest:
    spec: Manifest = m["spec"]["template"]
    return spec


def containers(m: Manifest) -> Iterator[Manifest]:
    spec = template(m)["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def matches(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if not selector:
        return False  # an empty selector selects nothing here: we never want one
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_workload_selectors(manifests: list[Manifest]) -> list[str]:
    """Every Deployment's and StatefulSet's selector matches its own pod template's labels."""
    problems = []
    for m in of_kind(manifests, "Deployment", "StatefulSet"):
        labels = template(m).get("metadata", {}).get("labels", {})
        if not matches(m["spec"].get("selector"), labels):
            problems.append(f"{name_of(m)}: selector does not match its pod template's labels")
    return problems


def _selected(manifests: list[Manifest], selector: Manifest) -> list[Manifest]:
    return [w for w in of_kind(manifests, *WORKLOADS) if matches(selector, template(w).get("metadata", {}).get("labels", {}))]


def check_services_select_one_workload(manifests: list[Manifest]) -> list[str]:
    """Every Service selects the pods of exactly one long-running workload (a replica Service:
    exactly one group), and its target port is a port of those pods."""
    problems = []
    for service in of_kind(manifests, "Service"):
        selector = {"matchLabels": service["spec"].get("selector") or {}}
        selected = _selected(manifests, selector)
        if len(selected) != 1 or selected[0]["kind"] == "Job":
            problems.append(f"{name_of(service)}: selects {[name_of(w) for w in selected]}, not exactly one workload")
            continue
        ports = {p.get("name") for c in containers(selected[0]) for p in c.get("ports", [])}
        ports |= {p["containerPort"] for c in containers(selected[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in ports:
                problems.append(f"{name_of(service)}: targetPort {port.get('targetPort')} is no port of {name_of(selected[0])}")
    return problems


def check_governing_services(manifests: list[Manifest]) -> list[str]:
    """A StatefulSet's serviceName is a headless Service that selects its pods."""
    problems = []
    services = {m["metadata"]["name"]: m for m in of_kind(manifests, "Service")}
    for m in of_kind(manifests, "StatefulSet"):
        service = services.get(m["spec"].get("serviceName", ""))
        labels = template(m).get("metadata", {}).get("labels", {})
        if service is None or service["spec"].get("clusterIP") != "None" or not matches({"matchLabels": service["spec"].get("selector")}, labels):
            problems.append(f"{name_of(m)}: serviceName is not a headless Service selecting its pods")
    return problems


def check_disruption_budgets(manifests: list[Manifest]) -> list[str]:
    """A PDB states one bound (minAvailable or maxUnavailable) and covers exactly one workload."""
    problems = []
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        spec = pdb["spec"]
        if ("minAvailable" in spec) == ("maxUnavailable" in spec):
            problems.append(f"{name_of(pdb)}: needs exactly one of minAvailable and maxUnavailable")
        if len(_selected(manifests, spec.get("selector") or {})) != 1:
            problems.append(f"{name_of(pdb)}: does not cover exactly one workload")
    return problems


def check_rolling_updates(manifests: list[Manifest]) -> list[str]:
    """maxSurge and maxUnavailable are not both 0 (the rollout could never start)."""
    problems = []
    for m in of_kind(manifests, "Deployment"):
        rolling = (m["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        if rolling and rolling.get("maxSurge", 1) in (0, "0%") and rolling.get("maxUnavailable", 1) in (0, "0%"):
            problems.append(f"{name_of(m)}: maxSurge and maxUnavailable are both 0")
    return problems


def check_autoscalers(manifests: list[Manifest]) -> list[str]:
    """An HPA's minimum is at most its maximum, it targets a Deployment that exists, and that
    Deployment states no replica count (server-side apply would fight the autoscaler)."""
    problems = []
    deployments = {m["metadata"]["name"]: m for m in of_kind(manifests, "Deployment")}
    for hpa in of_kind(manifests, "HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        if spec.get("minReplicas", 1) > spec["maxReplicas"]:
            problems.append(f"{name_of(hpa)}: minReplicas {spec.get('minReplicas')} above maxReplicas {spec['maxReplicas']}")
        target = deployments.get(spec["scaleTargetRef"]["name"])
        if target is None or spec["scaleTargetRef"]["kind"] != "Deployment":
            problems.append(f"{name_of(hpa)}: scales no declared Deployment")
        elif "replicas" in target["spec"]:
            problems.append(f"{name_of(hpa)}: its Deployment also sets spec.replicas")
    return problems


def check_extended_resources(manifests: list[Manifest]) -> list[str]:
    """GPUs (nvidia.com/*) only in limits, as whole numbers; CPU and memory requests equal limits."""
    problems = []
    for m in of_kind(manifests, *WORKLOADS):
        for c in containers(m):
            resources = c.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            where = f"{name_of(m)} container {c['name']}"
            for name in requests:
                if name.startswith(EXTENDED_PREFIXES):
                    problems.append(f"{where}: {name} in requests (GPUs go in limits only)")
            for name, value in limits.items():
                if name.startswith(EXTENDED_PREFIXES) and not re.fullmatch(r"[1-9]\d*", str(value)):
                    problems.append(f"{where}: {name} limit {value!r} is not a whole number")
            for name in ("cpu", "memory"):
                if requests.get(name) != limits.get(name):
                    problems.append(f"{where}: {name} request {requests.get(name)!r} differs from its limit {limits.get(name)!r}")
    return problems


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def check_no_literal_credentials(manifests: list[Manifest], markers: tuple[str, ...] = ()) -> list[str]:
    """No credential outside a Secret: env vars named like credentials come from secretKeyRef,
    no string anywhere but in a Secret embeds a URL password or one of `markers` (the test's
    known secret values), and every secretKeyRef names a key the declared Secret has (or an
    external Secret the config names)."""
    problems = []
    secrets = {m["metadata"]["name"]: m for m in of_kind(manifests, "Secret")}
    for m in manifests:
        if m["kind"] == "Secret":
            continue
        for text in _strings(m):
            if URL_WITH_PASSWORD.match(text) or any(marker in text for marker in markers):
                problems.append(f"{name_of(m)}: a credential in plain text")
    for m in of_kind(manifests, *WORKLOADS):
        for c in containers(m):
            for item in c.get("env", []):
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref is None:
                    if "value" in item and CREDENTIAL_NAME.search(item["name"]):
                        problems.append(f"{name_of(m)}: env {item['name']} is a literal value, not a secretKeyRef")
                    continue
                secret = secrets.get(ref["name"])
                data = {**((secret or {}).get("stringData") or {}), **((secret or {}).get("data") or {})}
                if secret is None or ref["key"] not in data:
                    problems.append(f"{name_of(m)}: env {item['name']} reads {ref['name']}/{ref['key']}, which is not declared")
    return problems


def check_termination_grace(manifests: list[Manifest]) -> list[str]:
    """A pod with a preStop sleep keeps it inside its grace period, with time to drain after it:
    terminationGracePeriodSeconds > preStop sleep (the replicas' exact arithmetic is tested
    against the config in test_resources.py)."""
    problems = []
    for m in of_kind(manifests, "Deployment", "StatefulSet"):
        spec = template(m)["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in containers(m):
            sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
            if sleep and grace <= sleep:
                problems.append(f"{name_of(m)}: terminationGracePeriodSeconds {grace} leaves no time after the preStop sleep {sleep}")
    return problems


def check_config_volumes(manifests: list[Manifest]) -> list[str]:
    """Every mount has a volume (or a StatefulSet's claim template); ConfigMap volumes name a
    declared ConfigMap, and a subPath mount one of its keys."""
    problems = []
    maps = {m["metadata"]["name"]: m for m in of_kind(manifests, "ConfigMap")}
    for m in of_kind(manifests, *WORKLOADS):
        volumes = {v["name"]: v for v in template(m)["spec"].get("volumes", [])}
        volumes.update({claim["metadata"]["name"]: {"claim": True} for claim in m["spec"].get("volumeClaimTemplates", [])})
        for c in containers(m):
            for mount in c.get("volumeMounts", []):
                volume = volumes.get(mount["name"])
                if volume is None:
                    problems.append(f"{name_of(m)}: mount {mount['name']} has no volume")
                    continue
                if "configMap" in volume:
                    config_map = maps.get(volume["configMap"]["name"])
                    if config_map is None or ("subPath" in mount and mount["subPath"] not in config_map.get("data", {})):
                        problems.append(f"{name_of(m)}: mount {mount['name']} reads what no declared ConfigMap has")
    return problems


def check_names_and_namespace(manifests: list[Manifest]) -> list[str]:
    """Names are DNS labels (Services: starting with a letter), and every namespaced object is in
    the one namespace of the stack."""
    problems = []
    namespaces = {m["metadata"].get("namespace") for m in manifests if m["kind"] != "Namespace"}
    if len(namespaces) != 1 or None in namespaces:
        problems.append(f"objects spread over namespaces {sorted(map(str, namespaces))}")
    for m in manifests:
        name = m["metadata"]["name"]
        pattern = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?" if m["kind"] == "Service" else r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
        if not re.fullmatch(pattern, name):
            problems.append(f"{name_of(m)}: name is not a valid DNS label for its kind")
    return problems


CHECKS: dict[str, Check] = {
    "workload-selectors": check_workload_selectors,
    "services-select-one-workload": check_services_select_one_workload,
    "governing-services": check_governing_services,
    "disruption-budgets": check_disruption_budgets,
    "rolling-updates": check_rolling_updates,
    "autoscalers": check_autoscalers,
    "extended-resources": check_extended_resources,
    "no-literal-credentials": check_no_literal_credentials,
    "termination-grace": check_termination_grace,
    "config-volumes": check_config_volumes,
    "names-and-namespace": check_names_and_namespace,
}
