"""Replicas as plain objects in this process, called directly on the running event loop."""

from __future__ import annotations

from asgiserve.backends.base import Backend, Replica, ReplicaSpec
from asgiserve.replica import ReplicaRuntime


class InProcessBackend(Backend):
    """The default: no serialisation, no processes; the right choice for tests and light models.

    The runtime is the replica: the scheduler calls it directly, nothing is copied.
    """

    name = "inprocess"

    def start_replica(self, spec: ReplicaSpec) -> Replica:
        return ReplicaRuntime(spec)
