"""Gated MLflow upgrades: a one-shot `mlflow db upgrade` job, named by the image tag, runs before the
MLflow server is created; a failing migration stops the program before the server is touched."""

from __future__ import annotations

from app import contract
from components.common import JobFailed
from mockrun import attempt, run_program
from stackconfig.names import ONE_SHOT_ROLES, ROLE_DB_UPGRADE, ROLE_MLFLOW
from tests.program.helpers import env_map


def test_the_migration_job_runs_the_new_image_against_the_metadata_store() -> None:
    stack = run_program("prod")
    (job,) = stack.by_role(ROLE_DB_UPGRADE)
    assert ROLE_DB_UPGRADE in ONE_SHOT_ROLES
    assert job.name == "mlflow-db-upgrade-0.1.0" and job.parent == "tracking"
    (server,) = stack.by_role(ROLE_MLFLOW)
    assert job.inputs["image"] == server.inputs["image"]
    assert job.inputs["attach"] is True and job.inputs["mustRun"] is False and job.inputs["restart"] == "no"
    # The database password stays in the (secret) environment, off the command line.
    assert job.inputs["command"] == ["sh", "-c", 'exec mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"']
    assert job.is_secret("envs") and env_map(job.inputs["envs"])["MLFLOW_BACKEND_STORE_URI"].startswith("mysql+pymysql://")
    assert "mysql" in job.depends_on
    assert job.name in server.depends_on
    assert contract.MLFLOW_HOST in server.inputs["networksAdvanced"][0]["aliases"]


def test_a_new_image_tag_is_a_new_job_before_the_new_server() -> None:
    before, after = run_program("dev"), run_program("dev", {"imageTag": "0.2.0"})
    assert [j.name for j in before.by_role(ROLE_DB_UPGRADE)] == ["mlflow-db-upgrade-0.1.0"]
    assert [j.name for j in after.by_role(ROLE_DB_UPGRADE)] == ["mlflow-db-upgrade-0.2.0"]
    assert "mlflow-db-upgrade-0.2.0" in after.container("mlflow").depends_on


def test_a_failed_migration_stops_before_the_server_and_what_needs_it() -> None:
    result = attempt("dev", exit_codes={"mlflow-db-upgrade-0.1.0": 1})
    assert isinstance(result.error, JobFailed), result.error
    assert "mlserve-dev-mlflow-db-upgrade-0.1.0" in str(result.error) and "exited with 1" in str(result.error)
    registered = {r.name for r in result.declared.containers()}
    assert "mlflow-db-upgrade-0.1.0" in registered
    # Neither the server nor anything waiting for it was registered: Pulumi replaces nothing.
    assert not registered & {"mlflow", "trainer", "replica-0", "replica-1"}, registered


def test_a_successful_migration_lets_the_whole_stack_through() -> None:
    result = attempt("dev", exit_codes={"mlflow-db-upgrade-0.1.0": 0})
    assert result.error is None and result.declared.container("mlflow")


def test_a_failed_bucket_job_stops_before_the_server() -> None:
    """The same gate for the one-shot job that makes MLflow's bucket (MLflow never creates it)."""
    result = attempt("dev", exit_codes={"minio-bucket": 2})
    assert isinstance(result.error, JobFailed), result.error
    assert "mlserve-dev-minio-bucket" in str(result.error) and "exited with 2" in str(result.error)
    registered = {r.name for r in result.declared.containers()}
    assert "minio-bucket" in registered and not registered & {"mlflow", "trainer", "replica-0"}, registered
