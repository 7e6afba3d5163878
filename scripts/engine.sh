#!/usr/bin/env bash
# The local Docker engine of the engine tests and of `python -m enginestack`:
#   scripts/engine.sh start   installs Debian's docker.io when no dockerd exists, starts dockerd
#                             when no engine answers, and prints "started <pid>" only then;
#   scripts/engine.sh stop PID  stops that dockerd (the one `start` printed), nothing else.
# An engine that was already running is used as it is and never stopped by these scripts.
# Debian 12's docker.io is Docker 20.10 (API 1.41): see README.md for what that version lacks.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
log=${MLSERVE_DOCKERD_LOG:-/tmp/mlserve-dockerd.log}
# The Debian client (20.10, /usr/bin/docker) speaks to the 20.10 engine; a newer client found
# first on PATH may lack the builder the engine expects.
docker_cli=/usr/bin/docker

engine_answers() {
  "${sudo_cmd[@]}" "$docker_cli" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

case "${1:-}" in
  start)
    # debootstrap makes the Debian rootfs the stand-in images start from (enginestack/standins.py).
    if ! command -v dockerd >/dev/null 2>&1 || [ ! -x "$docker_cli" ] || ! command -v debootstrap >/dev/null 2>&1; then
      echo "engine: installing Debian's docker.io and debootstrap" >&2
      # The package's own service stays down: this script decides when dockerd runs.
      apt_install_quiet docker.io debootstrap
    fi
    if engine_answers; then
      exit 0
    fi
    echo "engine: starting dockerd (log: $log)" >&2
    # setsid: the engine outlives neither its starter's terminal signals nor keeps its stdio.
    # --userland-proxy=false: published ports on 127.0.0.1 go through the kernel's NAT instead of
    # one docker-proxy process per port copying every byte (which, on two cores, capped the
    # balancer's throughput before the replicas did).
    "${sudo_cmd[@]}" setsid dockerd --userland-proxy=false >"$log" 2>&1 </dev/null &
    pid=$!
    deadline=$((SECONDS + 60))
    until engine_answers; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "engine: dockerd exited; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
      fi
      if ((SECONDS > deadline)); then
        echo "engine: dockerd did not answer within 60 s (log: $log)" >&2
        exit 1
      fi
      sleep 0.5
    done
    echo "started $pid"
    ;;
  stop)
    pid=${2:?usage: engine.sh stop PID (the pid that start printed)}
    "${sudo_cmd[@]}" kill -TERM "$pid" 2>/dev/null || exit 0
    # dockerd stops its containers (and the containerd it started) before it exits.
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.5
    done
    echo "engine: dockerd $pid still running after 60 s" >&2
    exit 1
    ;;
  *)
    echo "usage: scripts/engine.sh start | stop PID" >&2
    exit 2
    ;;
esac
