"""The one interface every backend implements.

A backend only moves messages between a `Scheduler` and `ReplicaRuntime`s, the way an httpx
transport only moves requests: `Backend.start_replica` builds a replica somewhere (this
process, a worker process, a Ray actor) and `Replica.handle` carries one call to it.

Every call, whatever its kind, is an ASGI-shaped exchange: `handle(call, receive, send)`.
For an HTTP or WebSocket call the messages are the ASGI ones; for a Python call the replica
sends one `asgiserve.result` message, for a streaming call one `asgiserve.item` message per
item. An exception raised by user code is raised from `handle`. Cancelling the task that
awaits `handle` cancels the call on the replica, on every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from asgiserve.autoscaling import Decider
    from asgiserve.config import DeploymentConfig
    from asgiserve.metrics import Snapshot

STOP_GRACE_S = 1.0  # how long past its graceful timeout a replica may take to stop
RESULT = "asgiserve.result"
ITEM = "asgiserve.item"

CallKind = Literal["asgi", "call", "stream", "control"]  # control: a backend's own calls


@dataclass(slots=True)
class Call:
    """One request for a replica: an ASGI exchange or a method call."""

    request_id: str
    kind: CallKind
    method: str = "__call__"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    scope: Scope | None = None
    route: str = ""
    replica_id: str = ""  # filled in by the scheduler, for the access log
    model_id: str = ""  # the multiplexed model it asks for
    trace: str = ""  # the W3C traceparent of the span it belongs to (`asgiserve.tracing`)


@dataclass
class ReplicaSpec:
    """What a backend needs to build one replica; picklable (cloudpickle) for remote backends."""

    app_name: str
    deployment_name: str
    replica_id: str
    target: Callable[..., Any]
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    config: DeploymentConfig
    ingress: str = ""  # the name of its application's ingress deployment


class Replica(ABC):
    """A running replica as the scheduler sees it."""

    replica_id: str
    # Made by another server, which also uses it (Ray): its samples are on that one's page.
    shared = False

    @abstractmethod
    async def start(self) -> None:
        """Called once, on the serving event loop, before the first call (runs ingress startup)."""

    @abstractmethod
    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        """Carry one call to the replica and its messages back."""

    @abstractmethod
    async def check_health(self) -> Any:
        """Raise if the replica is unhealthy (the user's `check_health`, or a dead process);
        else return the replica's report for `status()` (its batch queues), or None."""

    @abstractmethod
    async def metric_samples(self) -> Snapshot:
        """What the replica's recorder holds (`asgiserve.metrics`), for `GET /-/metrics`."""

    @abstractmethod
    async def stop(self, timeout_s: float) -> None:
        """Let in-flight calls finish within `timeout_s`, run ingress shutdown, release it.

        Returns within `timeout_s` plus `STOP_GRACE_S` whatever the replica does: one that
        does not answer (stopped, its event loop blocked) is killed.
        """


class Backend(ABC):
    """Where replicas run. Adding a backend means one new module with one subclass."""

    name: str
    # Replicas that share nothing (processes, actors) can start side by side.
    starts_in_parallel = False

    @abstractmethod
    def start_replica(self, spec: ReplicaSpec) -> Replica:
        """Build a replica; blocks until the user's constructor has run, raising its error."""

    def version(self, spec: ReplicaSpec) -> str:
        """What tells this deployment's replicas from others' under the same name, where
        servers share replicas; the handles to it carry it, so they reach only these."""
        return ""

    def shared_decider(self, spec: ReplicaSpec) -> Decider | None:
        """Where servers share this deployment's replicas, what decides how many there are
        for all of them (from the load each reports); None: each server decides alone."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the backend holds once no replica uses it."""

    def stop_starting(self) -> None:  # noqa: B027 - optional hook: threads cannot be stopped
        """End the replicas whose constructors still run, where that is possible (worker
        processes): a Ctrl-C while models load does not wait for them."""
