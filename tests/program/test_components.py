"""Each component's resources and their key inputs, on both stack files."""

from __future__ import annotations

import re

from app import contract
from mockrun import CONTAINER_TYPE, DeclaredStack
from mockrun.harness import IMAGE, NETWORK, RANDOM_PASSWORD, VOLUME
from stackconfig import settings as settings_module
from stackconfig.names import ONE_SHOT_ROLES
from tests.program.helpers import env_map

COMPONENTS = {
    "network": "PrivateNetwork",
    "metadata": "MetadataStore",
    "artifacts": "ArtifactStore",
    "images": "AppImages",
    "tracking": "TrackingServer",
    "trainer": "DemoModelTrainer",
    "replicas": "ModelReplicas",
    "balancer": "Balancer",
}


def networks(resource_inputs: dict[str, object]) -> list[dict[str, object]]:
    value = resource_inputs["networksAdvanced"]
    assert isinstance(value, list)
    return value


def test_every_component_has_its_type_token_and_owns_its_resources(any_stack: DeclaredStack) -> None:
    for name, component in COMPONENTS.items():
        resource = any_stack.component(name)
        assert resource.type == f"mlserve:stack:{component}"
        assert not resource.custom and resource.parent is None
        assert any_stack.children(name), f"{name} owns nothing"
    custom = [r for r in any_stack.resources if r.custom]
    assert custom and all(r.parent in COMPONENTS for r in custom), [r.name for r in custom if r.parent not in COMPONENTS]


def test_network_is_one_private_bridge(any_stack: DeclaredStack) -> None:
    (net,) = any_stack.of_type(NETWORK)
    assert net.parent == "network"
    assert net.inputs["name"] == f"mlserve-{any_stack.stack}" and net.inputs["driver"] == "bridge"
    for container in any_stack.containers():
        assert [n["name"] for n in networks(container.inputs)] == [net.inputs["name"]], container.name


def test_only_the_balancer_and_the_optional_mlflow_ui_are_published(any_stack: DeclaredStack) -> None:
    published = {c.name: c.inputs["ports"] for c in any_stack.containers() if c.inputs.get("ports")}
    assert set(published) <= {"balancer", "mlflow"}
    assert "balancer" in published
    for port in published.get("mlflow", []):
        assert port["ip"] == "127.0.0.1"


def test_every_container_rotates_its_logs_and_is_labelled(any_stack: DeclaredStack) -> None:
    for container in any_stack.containers():
        assert container.inputs["logDriver"] == "json-file", container.name
        assert container.inputs["logOpts"] == {"max-size": "10m", "max-file": "3"}, container.name
        assert {"label": "mlserve.stack", "value": any_stack.stack} in container.inputs["labels"]
        assert container.inputs["name"].startswith(f"mlserve-{any_stack.stack}-")


def test_services_restart_have_healthchecks_and_wait_for_health(any_stack: DeclaredStack) -> None:
    services = [c for c in any_stack.containers() if c.role not in ONE_SHOT_ROLES]
    assert {"mysql", "minio", "mlflow", "balancer", "replica-0"} <= {c.name for c in services}
    for container in services:
        inputs = container.inputs
        assert inputs["restart"] == "unless-stopped", container.name
        assert inputs["healthcheck"]["tests"][0] == "CMD", container.name
        assert inputs["wait"] is True and inputs["waitTimeout"] >= 60, container.name
        assert inputs["destroyGraceSeconds"] > 0, container.name


def test_mysql(any_stack: DeclaredStack) -> None:
    mysql = any_stack.container("mysql")
    assert mysql.parent == "metadata"
    assert mysql.inputs["image"] == settings_module.DEFAULTS["mysqlImage"]
    env = env_map(mysql.inputs["envs"])
    assert env["MYSQL_DATABASE"] == "mlflow" and env["MYSQL_USER"] == "mlflow"
    assert env["MYSQL_PASSWORD"] == "mock-password-mysql-password"
    assert env["MYSQL_ROOT_PASSWORD"] == "mock-password-mysql-root-password"
    assert mysql.is_secret("envs")
    assert mysql.inputs["volumes"] == [{"volumeName": f"mlserve-{any_stack.stack}-mysql-data", "containerPath": "/var/lib/mysql"}]
    assert "mysqladmin" in mysql.inputs["healthcheck"]["tests"]
    assert "ports" not in mysql.inputs
    assert networks(mysql.inputs)[0]["aliases"] == [contract.MYSQL_HOST]
    passwords = {r.name for r in any_stack.of_type(RANDOM_PASSWORD) if r.parent == "metadata"}
    assert passwords == {"mysql-password", "mysql-root-password"}


def test_minio_and_its_bucket_job(any_stack: DeclaredStack) -> None:
    minio = any_stack.container("minio")
    assert minio.parent == "artifacts"
    assert minio.inputs["image"] == settings_module.DEFAULTS["minioImage"]
    assert minio.inputs["command"] == ["server", "/data"]
    env = env_map(minio.inputs["envs"])
    assert env["MINIO_ROOT_USER"] == "mock-string-minio-user"
    assert env["MINIO_ROOT_PASSWORD"] == "mock-password-minio-password"
    assert minio.is_secret("envs")
    assert minio.inputs["volumes"][0]["containerPath"] == "/data"
    assert minio.inputs["healthcheck"]["tests"] == ["CMD", "mc", "ready", "local"]
    assert "ports" not in minio.inputs

    job = any_stack.container("minio-bucket")
    assert job.inputs["image"] == settings_module.DEFAULTS["minioClientImage"]
    assert job.inputs["command"] == ["mb", "--ignore-existing", "local/mlflow"]
    assert env_map(job.inputs["envs"])["MC_HOST_local"] == (
        f"http://mock-string-minio-user:mock-password-minio-password@{contract.MINIO_HOST}:{contract.MINIO_PORT}"
    )
    assert job.is_secret("envs")
    # One-shot: waits for the job to exit, does not restart it, and runs after MinIO is healthy.
    assert job.inputs["attach"] is True and job.inputs["mustRun"] is False and job.inputs["restart"] == "no"
    assert "minio" in job.depends_on


def test_minio_image_is_configurable() -> None:
    from mockrun import run_program

    stack = run_program("dev", {"minioImage": "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"})
    assert stack.container("minio").inputs["image"] == "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"


def test_images_are_built_from_app_and_not_pushed(any_stack: DeclaredStack) -> None:
    images = {i.name: i.inputs for i in any_stack.of_type(IMAGE)}
    assert set(images) == {"replica-image", "mlflow-image"}
    replica, mlflow = images["replica-image"], images["mlflow-image"]
    assert replica["build"]["context"] == "app" and replica["build"]["dockerfile"] == f"app/{contract.REPLICA_DOCKERFILE}"
    assert mlflow["build"]["dockerfile"] == f"app/{contract.TRACKING_DOCKERFILE}"
    assert replica["skipPush"] is True and mlflow["skipPush"] is True
    tag = settings_module.DEFAULTS["imageTag"]
    variant = "cpu" if any_stack.stack == "dev" else "cuda"
    base = settings_module.DEFAULTS["pythonImage"]
    assert replica["build"]["args"] == {contract.BUILD_ARG_VARIANT: variant, contract.BUILD_ARG_PYTHON_IMAGE: base}
    assert mlflow["build"]["args"] == {contract.BUILD_ARG_PYTHON_IMAGE: base}
    assert replica["imageName"] == f"mlserve-replica:{tag}-{variant}"
    assert mlflow["imageName"] == f"mlserve-mlflow:{tag}"


def test_python_image_is_the_base_of_both_builds() -> None:
    from mockrun import run_program

    stack = run_program("dev", {"pythonImage": "registry.local/python:3.11.9-slim-bookworm"})
    for image in stack.images():
        assert image.inputs["build"]["args"][contract.BUILD_ARG_PYTHON_IMAGE] == "registry.local/python:3.11.9-slim-bookworm"


def test_containers_run_the_built_image_id(any_stack: DeclaredStack) -> None:
    """pulumi-docker returns the image ID as repoDigest for an image built without a push
    (provider/image.go); `name@sha256:...` of an unpushed image does not run on an engine."""
    ids = {i.name: i for i in any_stack.images()}
    for container in any_stack.replicas() + any_stack.by_role("mlflow") + any_stack.by_role("trainer"):
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", container.inputs["image"]), container.inputs["image"]
    assert len(ids) == 2


def test_built_image_ids_reach_the_containers() -> None:
    """With the IDs of images really built (what the engine stand-in passes), the containers
    declare exactly those: what is tested on an engine is what the program declares."""
    from mockrun import run_program

    tag = settings_module.DEFAULTS["imageTag"]
    replica_id, mlflow_id = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    stack = run_program("dev", image_ids={f"mlserve-replica:{tag}-cpu": replica_id, f"mlserve-mlflow:{tag}": mlflow_id})
    assert {c.inputs["image"] for c in stack.replicas()} == {replica_id}
    assert stack.container("trainer").inputs["image"] == replica_id
    assert stack.container("mlflow").inputs["image"] == mlflow_id


def test_mlflow_server(any_stack: DeclaredStack) -> None:
    mlflow = any_stack.container("mlflow")
    assert mlflow.parent == "tracking"
    command = mlflow.inputs["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == str(contract.MLFLOW_PORT)
    assert command[command.index("--workers") + 1] == "1"
    assert "--serve-artifacts" in command
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert f"{contract.MLFLOW_HOST}:{contract.MLFLOW_PORT}" in allowed
    # No credentials on the command line: they would show in `docker ps` and in plain state.
    assert not any("mock-" in part for part in command)
    env = env_map(mlflow.inputs["envs"])
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        f"mysql+pymysql://mlflow:mock-password-mysql-password@{contract.MYSQL_HOST}:{contract.MYSQL_PORT}/mlflow"
    )
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{contract.MINIO_HOST}:{contract.MINIO_PORT}"
    assert env["AWS_ACCESS_KEY_ID"] == "mock-string-minio-user"
    assert env["AWS_SECRET_ACCESS_KEY"] == "mock-password-minio-password"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert mlflow.is_secret("envs")
    assert contract.ROUTE_HEALTH in " ".join(mlflow.inputs["healthcheck"]["tests"])
    assert mlflow.inputs["image"].startswith("sha256:")  # the built image's ID
    assert mlflow.inputs["image"] != any_stack.container("replica-0").inputs["image"]
    assert {"mysql", "minio-bucket"} <= set(mlflow.depends_on)
    assert networks(mlflow.inputs)[0]["aliases"] == [contract.MLFLOW_HOST]


def test_mlflow_ui_is_published_on_loopback_only_when_asked(dev: DeclaredStack, prod: DeclaredStack) -> None:
    dev_mlflow = dev.container("mlflow")
    assert dev_mlflow.inputs["ports"] == [{"internal": contract.MLFLOW_PORT, "external": 5000, "ip": "127.0.0.1"}]
    assert dev.output("mlflowUrl") == "http://127.0.0.1:5000"
    assert "ports" not in prod.container("mlflow").inputs


def test_trainer_job(any_stack: DeclaredStack) -> None:
    trainer = any_stack.container("trainer")
    assert trainer.parent == "trainer"
    assert trainer.inputs["command"] == ["python", "-m", contract.TRAINER_MODULE]
    env = env_map(trainer.inputs["envs"])
    assert env[contract.ENV_TRACKING_URI] == f"http://{contract.MLFLOW_HOST}:{contract.MLFLOW_PORT}"
    assert env[contract.ENV_MODEL_NAME] == "iris-classifier" and env[contract.ENV_MODEL_ALIAS] == "champion"
    assert env[contract.ENV_TRAINER_ONLY_IF_EMPTY] == "1"
    assert trainer.inputs["attach"] is True and trainer.inputs["mustRun"] is False
    assert trainer.inputs["image"] == any_stack.container("replica-0").inputs["image"]
    assert "mlflow" in trainer.depends_on
    assert "trainer" in any_stack.container("replica-0").depends_on


def test_trainer_can_be_switched_off() -> None:
    from mockrun import run_program

    stack = run_program("dev", {"trainDemoModel": False})
    assert stack.find("trainer", CONTAINER_TYPE) is None
    assert not [c for c in stack.components() if c.name == "trainer"]
    assert "mlflow" in stack.container("replica-0").depends_on


def test_volumes_are_named_and_protected_only_in_prod(dev: DeclaredStack, prod: DeclaredStack) -> None:
    for stack, protected in ((dev, False), (prod, True)):
        volumes = stack.of_type(VOLUME)
        assert {v.name for v in volumes} == {"mysql-data", "minio-data"}
        for volume in volumes:
            assert volume.protect is protected and volume.retain_on_delete is protected, (stack.stack, volume.name)
            assert volume.inputs["name"] == f"mlserve-{stack.stack}-{volume.name.split('-')[0]}-data"


def test_balancer(any_stack: DeclaredStack) -> None:
    from components.balancer import CONF_PATH, STATUS_PATH
    from nginx.render import render, render_status
    from stackconfig.settings import parse

    balancer = any_stack.container("balancer")
    assert balancer.parent == "balancer"
    assert balancer.inputs["image"] == settings_module.DEFAULTS["nginxImage"]
    uploads = {u["file"]: u["content"] for u in balancer.inputs["uploads"]}
    expected = any_stack.settings()
    assert expected == parse(any_stack.stack, {k.split(":", 1)[1]: v for k, v in any_stack.config.items()})
    assert uploads == {CONF_PATH: render(expected), STATUS_PATH: render_status(expected)}
    (port,) = balancer.inputs["ports"]
    assert port["internal"] == contract.BALANCER_PORT
    assert port["external"] == expected.balancer.port and port["ip"] == expected.balancer.bind_ip
    # The balancer takes nothing from the replicas: their replacement never deletes it.
    assert not {d for d in balancer.depends_on if d.startswith("replica")}
    assert balancer.inputs["stopSignal"] == "SIGQUIT"


def test_cpu_sets_pin_the_replicas_and_the_balancer_only_when_asked() -> None:
    from mockrun import run_program

    pinned = run_program("dev", {"replicas": 2, "replicaCpus": "1", "replicaCpuSet": "2-3", "balancerCpuSet": "0,1"})
    assert len(pinned.replicas()) == 2
    assert {r.inputs.get("cpuSet") for r in pinned.replicas()} == {"2-3"}
    assert pinned.container("balancer").inputs.get("cpuSet") == "0,1"
    # Only they: MLflow and the stores may run anywhere.
    assert {c.name for c in pinned.containers() if c.inputs.get("cpuSet")} == {"balancer", *(r.name for r in pinned.replicas())}
    unpinned = run_program("dev", {"replicas": 2})
    assert unpinned.containers() and not [c.name for c in unpinned.containers() if c.inputs.get("cpuSet")]


def test_docker_host_routes_every_docker_resource_through_one_provider() -> None:
    from mockrun import run_program

    stack = run_program("prod", {"dockerHost": "ssh://deploy@gpu-box"})
    (provider,) = stack.of_type("pulumi:providers:docker")
    assert provider.inputs["host"] == "ssh://deploy@gpu-box"
    docker_resources = [r for r in stack.resources if r.custom and r.type.startswith("docker:")]
    assert docker_resources
    for resource in docker_resources:
        assert resource.provider.startswith(provider.urn), resource.name
    assert stack.output("entryUrl") == "http://gpu-box:80"
