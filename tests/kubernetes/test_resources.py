"""The Kubernetes target's resources and their key fields, on the example stack and its variants."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from app import contract
from components.kubernetes.replicas import PRE_STOP_S, STARTUP_PERIOD_S
from components.kubernetes.stores import SECRET_NAME
from components.replicas import STOP_MARGIN_S, replica_envs, wait_timeout_s
from mockrun import DeclaredStack, run_program
from mockrun.harness import IMAGE, KUBERNETES_PROVIDER, RANDOM_PASSWORD
from nginx.render import CONF_FILE, RESOLVER_VALID_S, STATUS_FILE, render, render_status
from stackconfig.names import LABEL_GROUP, LABEL_ROLE, LABEL_STACK, LABEL_WEIGHT, MLFLOW_PRIVATE_URL

from .helpers import (
    CPU_IN_CLUSTER,
    IN_CLUSTER,
    SECRET_MARKERS,
    SECRETS,
    container,
    declared,
    env_values,
    kind_of,
    obj,
    pod_spec,
    replica_deployments,
)

COMPONENTS = {
    "images": "PushedImages",
    "stores": "ClusterStores",
    "tracking": "ClusterTracking",
    "replicas": "ClusterReplicas",
    "balancer": "ClusterBalancer",
}


def test_components_own_their_resources(any_cluster: DeclaredStack) -> None:
    for name, component in COMPONENTS.items():
        resource = any_cluster.component(name)
        assert resource.type == f"mlserve:stack:{component}" and resource.parent is None
        assert any_cluster.children(name), f"{name} owns nothing"
    top_level = {r.name for r in any_cluster.resources if r.custom and r.parent is None}
    assert top_level <= {"cluster", "namespace", "internal-only", "balancer-ingress"}


def test_one_explicit_provider_for_every_kubernetes_resource(any_cluster: DeclaredStack) -> None:
    (provider,) = any_cluster.of_type(KUBERNETES_PROVIDER)
    assert provider.inputs["namespace"] == any_cluster.settings().kubernetes.namespace  # type: ignore[union-attr]
    assert provider.inputs["enableServerSideApply"] == "true"  # provider config travels as strings
    objects = any_cluster.kubernetes()
    assert len(objects) >= 15
    for resource in objects:
        assert resource.provider.startswith(provider.urn + "::"), f"{resource.name} uses {resource.provider!r}"
    # Docker images are built by the local engine, not the cluster.
    assert all(not image.provider.startswith(provider.urn) for image in any_cluster.of_type(IMAGE))


def test_kubeconfig_is_a_secret_provider_input() -> None:
    stack = run_program("cluster", IN_CLUSTER, secrets={"kubeconfig": "apiVersion: v1\nkind: Config\n"})
    (provider,) = stack.of_type(KUBERNETES_PROVIDER)
    assert provider.inputs["kubeconfig"].startswith("apiVersion: v1") and provider.is_secret("kubeconfig")


def test_every_object_is_in_the_stack_namespace_and_labelled(any_cluster: DeclaredStack) -> None:
    namespace = any_cluster.settings().kubernetes.namespace  # type: ignore[union-attr]
    for resource in any_cluster.kubernetes():
        meta = resource.inputs["metadata"]
        if kind_of(resource) == "Namespace":
            assert meta["name"] == namespace
            continue
        assert meta["namespace"] == namespace, resource.name
        assert meta["labels"][LABEL_STACK] == "cluster" and LABEL_ROLE in meta["labels"], resource.name


def test_namespace_is_created_only_when_config_names_none(cluster: DeclaredStack, cpu_only: DeclaredStack) -> None:
    (namespace,) = cluster.kubernetes("Namespace")
    assert namespace.inputs["metadata"]["name"] == "mlserve-cluster"
    # The example protects its data: deleting the namespace would delete the volume claims.
    assert namespace.protect and namespace.retain_on_delete
    assert cpu_only.kubernetes("Namespace") == []
    assert {r.inputs["metadata"]["namespace"] for r in cpu_only.kubernetes()} == {"ml-serving"}


def test_images_are_pushed_to_the_registry_with_immutable_tags(cluster: DeclaredStack) -> None:
    images = {i.name: i.inputs for i in cluster.images()}
    assert set(images) == {"replica-image", "mlflow-image"}
    for name, inputs in images.items():
        assert inputs.get("skipPush") is not True, name
        assert inputs["registry"]["server"] == "registry.example.com"
        assert re.fullmatch(r"registry\.example\.com/ml/mlserve-(replica|mlflow):0\.1\.0(-cuda)?-[0-9a-f]{12}", inputs["imageName"]), inputs["imageName"]
    assert images["replica-image"]["build"]["args"] == {contract.BUILD_ARG_VARIANT: "cuda"}
    # Pods pull by digest.
    for deployment in replica_deployments(cluster):
        assert re.fullmatch(r"registry\.example\.com/ml/mlserve-replica@sha256:[0-9a-f]{64}", container(deployment)["image"])
    assert "@sha256:" in container(obj(cluster, "Deployment", "mlflow"))["image"]


def test_image_tags_follow_content_and_imageTag() -> None:
    from components.kubernetes.images import context_hash

    base = context_hash(contract.REPLICA_DOCKERFILE, {contract.BUILD_ARG_VARIANT: "cpu"})
    assert base == context_hash(contract.REPLICA_DOCKERFILE, {contract.BUILD_ARG_VARIANT: "cpu"})
    assert base != context_hash(contract.REPLICA_DOCKERFILE, {contract.BUILD_ARG_VARIANT: "cuda"})
    assert base != context_hash(contract.TRACKING_DOCKERFILE, {contract.BUILD_ARG_VARIANT: "cpu"})
    retagged = run_program("cluster", {**IN_CLUSTER, "imageTag": "0.2.0"})
    assert all(":0.2.0-" in i.inputs["imageName"] for i in retagged.images())


def test_external_stores_secret(cluster: DeclaredStack) -> None:
    secret = obj(cluster, "Secret", SECRET_NAME)
    data = secret.inputs["stringData"]
    assert secret.is_secret("stringData")
    assert data["backend-store-uri"] == SECRETS["databaseUrl"]
    assert data["aws-access-key-id"] == SECRETS["s3AccessKeyId"] and data["aws-secret-access-key"] == SECRETS["s3SecretAccessKey"]
    # The bucket job's MC_HOST_local: the key and secret URL-encoded into the endpoint.
    assert data["mc-host"] == "https://AKIAEXAMPLEKEYID:s3%2Fsecret%2Baccess-key@s3.eu-west-1.amazonaws.com"
    assert cluster.kubernetes("StatefulSet") == [] and cluster.of_type(RANDOM_PASSWORD) == []


def test_in_cluster_stores_are_statefulsets_with_claims_and_headless_services(in_cluster: DeclaredStack) -> None:
    passwords = {r.name for r in in_cluster.of_type(RANDOM_PASSWORD)}
    assert passwords == {"mysql-password", "mysql-root-password", "minio-password"}
    data = obj(in_cluster, "Secret", SECRET_NAME).inputs["stringData"]
    assert data["backend-store-uri"] == "mysql+pymysql://mlflow:mock-password-mysql-password@mysql:3306/mlflow"
    assert data["mysql-root-password"] == "mock-password-mysql-root-password"
    for name, port, size in (("mysql", contract.MYSQL_PORT, "10Gi"), ("minio", contract.MINIO_PORT, "50Gi")):
        statefulset = obj(in_cluster, "StatefulSet", name)
        spec = statefulset.inputs["spec"]
        assert spec["serviceName"] == name and spec["replicas"] == 1
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == size and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        # protectData (the example sets it): protected, retained, and the claims kept on delete.
        assert statefulset.protect and statefulset.retain_on_delete
        assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
        service = obj(in_cluster, "Service", name)
        assert service.inputs["spec"]["clusterIP"] == "None" and service.inputs["spec"]["ports"][0]["port"] == port
    mysql_env = env_values(container(obj(in_cluster, "StatefulSet", "mysql")))
    assert mysql_env["MYSQL_PASSWORD"] == {"secret": (SECRET_NAME, "mysql-password")}
    assert mysql_env["MYSQL_ROOT_PASSWORD"] == {"secret": (SECRET_NAME, "mysql-root-password")}
    minio_env = env_values(container(obj(in_cluster, "StatefulSet", "minio")))
    assert minio_env["MINIO_ROOT_PASSWORD"] == {"secret": (SECRET_NAME, "minio-password")}


def test_unprotected_in_cluster_claims_go_with_the_stack() -> None:
    stack = run_program("cluster", {**IN_CLUSTER, "protectData": False, "storageClass": "fast-ssd"})
    statefulset = obj(stack, "StatefulSet", "mysql")
    assert not statefulset.protect and not statefulset.retain_on_delete
    assert statefulset.inputs["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert statefulset.inputs["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    assert not stack.kubernetes("Namespace")[0].protect


def test_mlflow_server(any_cluster: DeclaredStack) -> None:
    deployment = obj(any_cluster, "Deployment", "mlflow")
    c = container(deployment)
    command = c["command"]
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    namespace = any_cluster.settings().kubernetes.namespace  # type: ignore[union-attr]
    for name in ("mlflow", f"mlflow.{namespace}", f"mlflow.{namespace}.svc", f"mlflow.{namespace}.svc.cluster.local"):
        assert name in hosts and f"{name}:5000" in hosts
    assert "localhost:5000" in hosts
    env = env_values(c)
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"secret": (SECRET_NAME, "backend-store-uri")}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secret": (SECRET_NAME, "aws-secret-access-key")}
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert c["readinessProbe"]["httpGet"]["path"] == contract.ROUTE_HEALTH
    service = obj(any_cluster, "Service", "mlflow")
    assert service.inputs["spec"]["type"] == "ClusterIP" and service.inputs["spec"]["ports"][0]["port"] == contract.MLFLOW_PORT
    assert "mlflow-db-upgrade" in deployment.depends_on


def test_jobs_are_named_by_image_tag_and_ordered(any_cluster: DeclaredStack) -> None:
    images = {i.name: i.inputs["imageName"].rsplit(":", 1)[1] for i in any_cluster.images()}
    migration = obj(any_cluster, "Job", f"mlflow-db-upgrade-{images['mlflow-image'].replace('.', '-')}")
    assert migration.inputs["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    c = container(migration)
    assert "MLFLOW_BACKEND_STORE_URI" in " ".join(c["command"]) and env_values(c)["MLFLOW_BACKEND_STORE_URI"]["secret"]
    bucket = next(j for j in any_cluster.kubernetes("Job") if j.name == "minio-bucket")
    assert bucket.inputs["metadata"]["name"] == "minio-bucket-release-2025-04-16t18-13-26z"
    assert container(bucket)["args"][:2] == ["mb", "--ignore-existing"]
    assert env_values(container(bucket))["MC_HOST_local"] == {"secret": (SECRET_NAME, "mc-host")}
    assert "minio-bucket" in migration.depends_on
    if any_cluster.settings().train_demo_model:
        trainer = obj(any_cluster, "Job", f"trainer-{images['replica-image'].replace('.', '-')}")
        assert {"mlflow", "mlflow-service"} <= set(trainer.depends_on)
        assert env_values(container(trainer))[contract.ENV_TRACKING_URI] == MLFLOW_PRIVATE_URL


def test_replica_groups_are_one_deployment_and_headless_service_per_weight(cluster: DeclaredStack) -> None:
    deployments = replica_deployments(cluster)
    assert [d.inputs["metadata"]["name"] for d in deployments] == ["replica-w3", "replica-w2", "replica-w1"]
    assert [d.inputs["spec"]["replicas"] for d in deployments] == [1, 1, 1]
    for deployment in deployments:
        name = deployment.inputs["metadata"]["name"]
        weight = name.rsplit("w", 1)[1]
        match = deployment.inputs["spec"]["selector"]["matchLabels"]
        assert match == {LABEL_STACK: "cluster", LABEL_ROLE: "replica", LABEL_GROUP: "default", LABEL_WEIGHT: weight}
        service = obj(cluster, "Service", name)
        assert service.inputs["spec"]["clusterIP"] == "None" and service.inputs["spec"]["selector"] == match
        pdb = obj(cluster, "PodDisruptionBudget", name)
        assert pdb.inputs["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": match}}
    assert cluster.output("replicaNames") == ["replica-w3", "replica-w2", "replica-w1"]


def test_replica_pods(cluster: DeclaredStack) -> None:
    settings = cluster.settings()
    for deployment in replica_deployments(cluster):
        spec = pod_spec(deployment)
        c = container(deployment)
        assert c["command"] == ["python", "-m", contract.REPLICA_MODULE]
        assert c["ports"] == [{"name": "http", "containerPort": contract.REPLICA_PORT}]
        assert c["readinessProbe"]["httpGet"] == {"path": contract.ROUTE_READY, "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": contract.ROUTE_HEALTH, "port": "http"}
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == contract.ROUTE_READY
        # Sized to the model load: as long as the Docker target waits for a replica.
        assert startup["periodSeconds"] == STARTUP_PERIOD_S
        assert 0 <= startup["periodSeconds"] * startup["failureThreshold"] - wait_timeout_s(settings) < STARTUP_PERIOD_S
        assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == PRE_STOP_S
        # Requests = limits (Docker's MB are MiB); GPUs in limits only, whole.
        assert c["resources"]["requests"] == {"cpu": "2", "memory": "4096Mi"}
        assert c["resources"]["limits"] == {"cpu": "2", "memory": "4096Mi", "nvidia.com/gpu": "1"}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert "runtimeClassName" not in spec
        (volume,) = spec["volumes"]
        assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "1024Mi"}
        assert c["volumeMounts"] == [{"name": volume["name"], "mountPath": "/dev/shm"}]
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["maxSkew"] == 1 and spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["matchLabelKeys"] == ["pod-template-hash"]
        assert spread["labelSelector"] == deployment.inputs["spec"]["selector"]
        assert deployment.inputs["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        # The Docker target's environment, but the instance id is the pod's name.
        env = env_values(c)
        docker_env = dict(p.split("=", 1) for p in replica_envs(settings, settings.default_group, "x", MLFLOW_PRIVATE_URL))
        assert env.pop(contract.ENV_INSTANCE_ID) == {"field": "metadata.name"}
        del docker_env[contract.ENV_INSTANCE_ID]
        assert env == docker_env


@pytest.mark.parametrize("grace", [1, 30, 120])
def test_termination_grace_is_prestop_plus_shutdown_grace_plus_margin(grace: int) -> None:
    # A draining replica must be able to finish what it admitted: the scoring timeout fits the grace.
    stack = run_program("cluster", {**IN_CLUSTER, "shutdownGraceSeconds": grace, "scoringTimeoutSeconds": min(grace, 30)})
    assert PRE_STOP_S >= RESOLVER_VALID_S + 5
    for deployment in replica_deployments(stack):
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] == PRE_STOP_S + grace + STOP_MARGIN_S
        assert env_values(container(deployment))[contract.ENV_SHUTDOWN_GRACE_S] == str(grace)


def test_cpu_only_replicas_ask_for_no_gpu(cpu_only: DeclaredStack) -> None:
    (deployment,) = replica_deployments(cpu_only)
    assert deployment.inputs["spec"]["replicas"] == 2
    spec, c = pod_spec(deployment), container(deployment)
    assert not any("nvidia" in key for key in c["resources"]["limits"])
    assert "tolerations" not in spec and "nodeSelector" not in spec
    assert spec["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert cpu_only.by_name("replica-image").inputs["build"]["args"] == {contract.BUILD_ARG_VARIANT: "cpu"}
    assert cpu_only.kubernetes("Job") and all(j.name != "trainer" for j in cpu_only.kubernetes("Job"))


def test_fractional_cpus_gpu_count_runtime_class_and_rollout_keys() -> None:
    stack = run_program("cluster", {**IN_CLUSTER, "replicaCpus": "1.5", "gpuCount": 2, "gpuRuntimeClass": "nvidia",
                                    "replicaMaxSurge": 0, "replicaMaxUnavailable": 1})
    for deployment in replica_deployments(stack):
        c = container(deployment)
        assert c["resources"]["requests"]["cpu"] == "1500m" == c["resources"]["limits"]["cpu"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and "nvidia.com/gpu" not in c["resources"]["requests"]
        assert pod_spec(deployment)["runtimeClassName"] == "nvidia"
        assert deployment.inputs["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_autoscalers_replace_the_replica_counts(autoscaled: DeclaredStack) -> None:
    for deployment in replica_deployments(autoscaled):
        name = deployment.inputs["metadata"]["name"]
        assert "replicas" not in deployment.inputs["spec"], name
        hpa = obj(autoscaled, "HorizontalPodAutoscaler", name).inputs
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}


def test_replica_deployments_roll_one_after_another(cluster: DeclaredStack) -> None:
    deployments = replica_deployments(cluster)
    assert "trainer" in deployments[0].depends_on
    for previous, deployment in zip(deployments, deployments[1:], strict=False):
        assert previous.name in deployment.depends_on


def test_balancer(any_cluster: DeclaredStack) -> None:
    settings = any_cluster.settings()
    conf = obj(any_cluster, "ConfigMap", "balancer-conf").inputs["data"]
    assert conf == {CONF_FILE: render(settings), STATUS_FILE: render_status(settings)}
    deployment = obj(any_cluster, "Deployment", "balancer")
    assert deployment.inputs["spec"]["replicas"] == 2
    template = deployment.inputs["spec"]["template"]
    digest = hashlib.sha256()
    for key in sorted(conf):
        digest.update(key.encode() + b"\0" + conf[key].encode() + b"\0")
    assert template["metadata"]["annotations"] == {"mlserve.io/config-sha256": digest.hexdigest()}
    c = container(deployment)
    assert c["image"] == settings.images.nginx
    assert {m["mountPath"]: m["subPath"] for m in c["volumeMounts"]} == {"/etc/nginx/nginx.conf": CONF_FILE, "/etc/nginx/status/status.conf": STATUS_FILE}
    assert c["readinessProbe"]["httpGet"]["path"] == "/nginx-health"
    assert obj(any_cluster, "PodDisruptionBudget", "balancer").inputs["spec"]["maxUnavailable"] == 1
    service = obj(any_cluster, "Service", "balancer").inputs["spec"]
    assert service["ports"] == [{"name": "http", "port": settings.balancer.port, "targetPort": "http"}]
    assert service["type"] == settings.kubernetes.balancer_service_type  # type: ignore[union-attr]


def test_a_balancer_key_rolls_the_nginx_pods(in_cluster: DeclaredStack) -> None:
    changed = run_program("cluster", {**IN_CLUSTER, "balancerReadTimeoutSeconds": 45})
    annotation = "mlserve.io/config-sha256"
    before = obj(in_cluster, "Deployment", "balancer").inputs["spec"]["template"]["metadata"]["annotations"][annotation]
    after = obj(changed, "Deployment", "balancer").inputs["spec"]["template"]["metadata"]["annotations"][annotation]
    assert before != after


def test_only_nginx_is_reachable_from_outside(any_cluster: DeclaredStack) -> None:
    policies = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in any_cluster.kubernetes("NetworkPolicy")}
    internal = policies["internal-only"]
    assert internal["podSelector"] == {
        "matchLabels": {LABEL_STACK: "cluster"},
        "matchExpressions": [{"key": LABEL_ROLE, "operator": "NotIn", "values": ["balancer"]}],
    }
    assert internal["ingress"] == [{"from": [{"podSelector": {"matchLabels": {LABEL_STACK: "cluster"}}}]}]
    edge = policies["balancer-ingress"]
    assert edge["podSelector"]["matchLabels"][LABEL_ROLE] == "balancer"
    assert edge["ingress"] == [{"ports": [{"protocol": "TCP", "port": "http"}]}]
    # Every pod of the stack is covered by one of the two.
    from .semantics import matches

    for workload in any_cluster.kubernetes("Deployment") + any_cluster.kubernetes("StatefulSet") + any_cluster.kubernetes("Job"):
        labels = workload.inputs["spec"]["template"]["metadata"]["labels"]
        assert sum(matches(spec["podSelector"], labels) for spec in policies.values()) == 1, workload.name


def _plain_strings(value: Any, path: tuple[Any, ...], secret_paths: frozenset[tuple[Any, ...]]) -> list[str]:
    if any(path[: len(p)] == p for p in secret_paths):
        return []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _plain_strings(v, (*path, k), secret_paths)]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _plain_strings(v, (*path, i), secret_paths)]
    return [value] if isinstance(value, str) else []


def test_no_secret_value_outside_a_secret_input(any_cluster: DeclaredStack) -> None:
    checked = 0
    for resource in any_cluster.resources:
        for text in _plain_strings(resource.inputs, (), resource.secret_paths):
            checked += 1
            assert not any(marker in text for marker in SECRET_MARKERS), f"{resource.name} leaks a credential: {text[:40]}"
    assert checked > 200
    # The credentials are in the Secret, as a secret input, and nowhere else in the manifests.
    assert obj(any_cluster, "Secret", SECRET_NAME).is_secret("stringData")


def test_outputs_mirror_the_docker_target(cluster: DeclaredStack, in_cluster: DeclaredStack) -> None:
    docker = run_program("dev").outputs
    for stack in (cluster, in_cluster):
        assert {"entryUrl", "mlflowUrl", "replicaNames", "networkName"} <= set(stack.outputs)
        assert not stack.outputs["entryUrl"].secret
    # The LoadBalancer's address is unknown under mocks: the in-cluster URL stands in.
    assert cluster.output("entryUrl") == "http://balancer.mlserve-cluster.svc.cluster.local:80"
    assert cluster.output("mlflowUrl") == "http://mlflow.mlserve-cluster.svc.cluster.local:5000"
    generated = {"mysqlPassword", "mysqlRootPassword", "minioAccessKey", "minioSecretKey"}
    assert generated <= set(docker) and generated <= set(in_cluster.outputs) and not generated & set(cluster.outputs)
    for key in generated:
        assert in_cluster.outputs[key].secret and in_cluster.output(key).startswith("mock-")


def test_replica_pods_run_one_serving_process_per_cpu_or_gpu() -> None:
    """The Docker target's rule (settings._workers) on the cluster too: 2 CPUs, 2 processes;
    a GPU pod, one per GPU; one process (1.5 CPUs) is the replica's default and left unset."""
    two = declared("cluster", {**CPU_IN_CLUSTER, "replicaCpus": "2"})
    assert all(env_values(container(d))[contract.ENV_WORKERS] == "2" for d in replica_deployments(two))
    gpu = declared("cluster", {**IN_CLUSTER, "replicaCpus": "4", "gpuCount": 2})
    assert all(env_values(container(d))[contract.ENV_WORKERS] == "2" for d in replica_deployments(gpu))
    one = declared("cluster", {**CPU_IN_CLUSTER, "replicaCpus": "1.5"})
    assert all(contract.ENV_WORKERS not in env_values(container(d)) for d in replica_deployments(one))
