"""What the infrastructure program and the replica image must agree on.

Dependency-free on purpose: `components/` imports it without pulling in the
replica server's web framework or MLflow, and the replica image carries it
without any infrastructure code.
"""

from __future__ import annotations

# Ports inside the containers. The local stack runner keeps them and gives each
# container its own loopback address instead.
REPLICA_PORT = 8080
MLFLOW_PORT = 5000
MYSQL_PORT = 3306
MINIO_PORT = 9000
BALANCER_PORT = 80
# The entry's port inside the container when the stack terminates TLS (then the only entry).
BALANCER_TLS_PORT = 443
BALANCER_STATUS_PORT = 8081
# nginx's internal relay of mirrored (shadow) requests; never published.
BALANCER_MIRROR_PORT = 8082

# Hostnames on the private network (container names double as DNS names).
MYSQL_HOST = "mysql"
MINIO_HOST = "minio"
MLFLOW_HOST = "mlflow"
BALANCER_HOST = "balancer"

# Replica HTTP routes (those of `mlflow models serve`, plus ours).
ROUTE_PING = "/ping"
ROUTE_HEALTH = "/health"
ROUTE_READY = "/ready"
ROUTE_VERSION = "/version"
ROUTE_METRICS = "/metrics"
ROUTE_INVOCATIONS = "/invocations"

# Replica configuration, passed as environment variables.
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MODEL_NAME = "MLSERVE_MODEL_NAME"
ENV_MODEL_ALIAS = "MLSERVE_MODEL_ALIAS"
ENV_INSTANCE_ID = "MLSERVE_INSTANCE_ID"
ENV_BIND_HOST = "MLSERVE_BIND_HOST"
ENV_PORT = "MLSERVE_PORT"
ENV_POLL_INTERVAL_S = "MLSERVE_POLL_INTERVAL_S"
ENV_MAX_BATCH_SIZE = "MLSERVE_MAX_BATCH_SIZE"
ENV_MAX_BATCH_WAIT_MS = "MLSERVE_MAX_BATCH_WAIT_MS"
ENV_MAX_QUEUE = "MLSERVE_MAX_QUEUE"
ENV_MAX_BODY_BYTES = "MLSERVE_MAX_BODY_BYTES"
ENV_DEVICE = "MLSERVE_DEVICE"
ENV_SHUTDOWN_GRACE_S = "MLSERVE_SHUTDOWN_GRACE_S"
ENV_LOG_LEVEL = "MLSERVE_LOG_LEVEL"
# "true" (default) or "false": false keeps every prediction on the estimator's own method.
ENV_PREDICT_KERNELS = "MLSERVE_PREDICT_KERNELS"
# Seconds from admission to answer before the replica answers 504 DEADLINE_EXCEEDED.
ENV_SCORING_TIMEOUT_S = "MLSERVE_SCORING_TIMEOUT_S"
# The replica group the replica belongs to (stackconfig.names.DEFAULT_GROUP or a named group).
ENV_GROUP = "MLSERVE_GROUP"
# Shadow replicas only: the alias whose answers the shadow's are compared with (the primary's).
ENV_COMPARE_ALIAS = "MLSERVE_COMPARE_ALIAS"
# Percent (0-100) of invocations whose request and answer are written to the payload log.
ENV_PAYLOAD_LOG_PERCENT = "MLSERVE_PAYLOAD_LOG_PERCENT"
# Seconds between payload log uploads (a batch also goes once it is large enough).
ENV_PAYLOAD_LOG_FLUSH_S = "MLSERVE_PAYLOAD_LOG_FLUSH_S"
# Payload logs: objects under this prefix of the artifact store, written and read through the
# MLflow server's artifact proxy (`--serve-artifacts`), which replicas reach without S3 keys.
PAYLOAD_LOG_PREFIX = "payload-logs"
MLFLOW_ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
# Seconds after its model loaded within which the health probe wants proof that the balancer
# routes to this replica (an answered invocation) before it calls the replica healthy; 0 or
# unset: ready is enough. See app/server/probe.py.
ENV_ROTATION_GRACE_S = "MLSERVE_ROTATION_GRACE_S"

# Serving processes of one replica: a whole number (1: one process, as before; 2 or more: a
# supervisor and that many workers on the one port), or WORKERS_PER_GPU (one per visible GPU).
ENV_WORKERS = "MLSERVE_WORKERS"
WORKERS_PER_GPU = "per-gpu"
MAX_WORKERS = 64

# Trainer configuration (it also reads ENV_TRACKING_URI, ENV_MODEL_NAME, ENV_MODEL_ALIAS).
ENV_TRAINER_ONLY_IF_EMPTY = "MLSERVE_TRAINER_ONLY_IF_EMPTY"

# Device selection values for ENV_DEVICE.
DEVICE_AUTO = "auto"
DEVICE_CPU = "cpu"
DEVICE_CUDA = "cuda"

# Entry points, run as `python -m <module>` in the image's working directory.
REPLICA_MODULE = "app.server"
TRAINER_MODULE = "app.trainer"
# Exits 0 when the replica in the same container is ready: the image's HEALTHCHECK and the
# healthcheck the program declares both run it.
PROBE_MODULE = "app.server.probe"

# Image build: the context is `app/`; the Dockerfiles live there.
REPLICA_DOCKERFILE = "Dockerfile.replica"
TRACKING_DOCKERFILE = "Dockerfile.mlflow"
BUILD_ARG_VARIANT = "VARIANT"  # "cpu" (default) or "cuda"
BUILD_ARG_PYTHON_IMAGE = "PYTHON_IMAGE"  # base image of both Dockerfiles (stack key pythonImage)
IMAGE_WORKDIR = "/srv"

# Response headers of every /invocations answer: which replica and which model version
# produced it (load tests attribute answers with them). X-Request-ID is echoed.
HEADER_INSTANCE_ID = "X-Instance-ID"
HEADER_MODEL_VERSION = "X-Model-Version"
HEADER_MODEL_NAME = "X-Model-Name"
HEADER_MODEL_ALIAS = "X-Model-Alias"
HEADER_REQUEST_ID = "X-Request-ID"
# Set by the balancer on the copies of requests it mirrors to a shadow group.
HEADER_MIRRORED = "X-Mlserve-Mirrored"
# Set by the balancer: the name (never the value) of the API key a request came with.
HEADER_API_KEY_NAME = "X-Mlserve-Api-Key-Name"
# Where a client may put its API key (the balancer strips both before a replica sees them).
HEADER_AUTHORIZATION = "Authorization"  # "Bearer <key>"
HEADER_API_KEY = "X-API-Key"
