#!/bin/sh
# `server DIR [--address HOST:PORT]` as the MinIO image takes it -> moto's S3 server on port 9000.
# moto keeps objects in memory: DIR is accepted and unused (no data survives a restart), and
# moto accepts any credentials (MINIO_ROOT_USER/MINIO_ROOT_PASSWORD are not checked).
set -eu
if [ "${1:-}" = server ]; then
  port=9000
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --address) port=${2##*:}; shift 2 ;;
      --*) shift ;;
      *) shift ;;  # the data directory
    esac
  done
  exec moto_server -H 0.0.0.0 -p "$port"
fi
exec "$@"
