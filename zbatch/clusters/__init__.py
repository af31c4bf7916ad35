"""Cluster backends: a scheduler composed with a connection (`command`), or DRMAA (`drmaa`)."""

from __future__ import annotations

from zbatch.clusters.base import Cluster
from zbatch.clusters.command import CommandCluster
from zbatch.connections.local import LocalConnection
from zbatch.errors import ProfileError
from zbatch.model.profiles import Profile
from zbatch.schedulers import scheduler_for

__all__ = ["Cluster", "CommandCluster", "cluster_for"]


def cluster_for(profile: Profile) -> Cluster:
    """Compose the backend a profile describes."""
    kind = profile.connection.type
    if kind == "local":
        return CommandCluster(
            scheduler_for(profile), LocalConnection(profile.connection.command_timeout_s)
        )
    if kind == "ssh":
        from zbatch.connections.pool import ConnectionPool
        from zbatch.connections.ssh import SshConnection

        pool = ConnectionPool(
            lambda: SshConnection(profile.connection), profile.connection.pool_size
        )
        return CommandCluster(scheduler_for(profile), pool)
    if kind == "drmaa":
        from zbatch.clusters.drmaa import DrmaaCluster

        return DrmaaCluster(profile)
    raise ProfileError(f"{profile.source}: connection type {kind!r} is not supported")
