"""Replicas as plain objects in this process, called directly on the running event loop."""

from __future__ import annotations

from starlette.types import Receive, Send

from asgiserve.backends.base import Backend, Call, Replica, ReplicaSpec
from asgiserve.replica import ReplicaRuntime


class InProcessReplica(Replica):
    def __init__(self, runtime: ReplicaRuntime) -> None:
        self.runtime = runtime
        self.replica_id = runtime.spec.replica_id

    async def start(self) -> None:
        await self.runtime.start()

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        await self.runtime.handle(call, receive, send)

    async def check_health(self) -> None:
        await self.runtime.check_health()

    async def stop(self, timeout_s: float) -> None:
        await self.runtime.stop()


class InProcessBackend(Backend):
    """The default: no serialisation, no processes; the right choice for tests and light models."""

    name = "inprocess"

    def start_replica(self, spec: ReplicaSpec) -> Replica:
        return InProcessReplica(ReplicaRuntime(spec))
