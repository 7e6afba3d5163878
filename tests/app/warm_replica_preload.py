"""Imported by warm_replica.py's fork server before its first fork: what a replica's serving
process imports, once (supervisor.preload(), the list the replica's own forks share)."""

from app.server import __main__ as _replica_main  # noqa: F401
from app.server import supervisor

supervisor.preload()
