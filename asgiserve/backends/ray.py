"""Replicas as Ray actors, placed by Ray anywhere in a cluster.

Each replica is one actor wrapping the same `ReplicaRuntime`. The server calls its actors
directly (no proxy actor in between), with the ASGI exchange stretched over two methods:

    begin(call, first)  a plain actor call: runs the call and returns its first messages,
                        which for a small request is the whole response
    more(request_id)    a streaming generator: the rest of a streaming response or of a
                        handle's stream, each batch as soon as it is produced

When the replica awaits `receive()` a second time (a streamed body, a WebSocket), it sends
a PULL marker and the server answers with `deliver`. Cancelling the caller's task
`ray.cancel`s the call, which raises `CancelledError` in the user's handler.

Actors are named by replica id in the `asgiserve` namespace, so servers that deploy the
same application on one cluster share its replicas instead of starting their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Message, Receive, Send

from asgiserve import registry
from asgiserve.backends.base import RESULT, Backend, Call, Replica, ReplicaSpec
from asgiserve.backends.wire import REDUCERS, pickle_spec, remote_error, wire_scope
from asgiserve.config import BACKEND_ENV
from asgiserve.exceptions import (
    DeploymentUnavailableError,
    ReplicaDiedError,
    RequestCancelledError,
)
from asgiserve.replica import ReplicaRuntime, drain

try:
    import ray
    from ray.exceptions import RayActorError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the ray backend needs Ray, which is not installed: pip install 'asgiserve[ray]'"
    ) from exc

NAMESPACE = "asgiserve"
PULL = "asgiserve.pull"  # the replica awaits `receive()`: the server answers with `deliver`
RELEASE_WAIT_S = 10.0  # how long a stopped actor's name may take to become free again

Batch = tuple[list[Message], bool, BaseException | None]  # messages, finished, error


def rebuild(reduced: tuple[Any, tuple[Any, ...]]) -> Any:
    function, args = reduced
    return function(*args)


def register_serializers() -> None:
    """Teach Ray's pickler what ours knows (requests passed to handles, app state, locks)."""
    for cls, reducer in REDUCERS.items():
        ray.util.register_serializer(cls, serializer=reducer, deserializer=rebuild)


# -- inside the actor ----------------------------------------------------------------------


class Exchange:
    """One call running in a replica; its outgoing messages wait here for the server."""

    def __init__(self, runtime: ReplicaRuntime, call: Call, first: Message | None) -> None:
        self.request_id = call.request_id
        self.first = first
        self.outbox: list[Message] = []
        self.changed = asyncio.Event()
        self.inbox: asyncio.Future[Message] | None = None
        self.error: BaseException | None = None
        self.task = asyncio.ensure_future(self.run(runtime, call))

    async def run(self, runtime: ReplicaRuntime, call: Call) -> None:
        try:
            await runtime.handle(call, self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = remote_error(exc, f"replica {runtime.replica_id}")
        finally:
            self.changed.set()

    async def receive(self) -> Message:
        if self.first is not None:
            message, self.first = self.first, None
            return message
        self.inbox = asyncio.get_running_loop().create_future()
        await self.send({"type": PULL})
        return await self.inbox

    async def send(self, message: Message) -> None:
        self.outbox.append(message)
        self.changed.set()

    def worth_sending(self) -> bool:
        """Done, or holding a message the server should have now.

        A lone response start waits for its body (one message less) and a result for the
        end of its call, which follows at once.
        """
        if self.task.done():
            return True
        return bool(self.outbox) and self.outbox[-1]["type"] not in ("http.response.start", RESULT)

    async def batch(self) -> Batch:
        while not self.worth_sending():
            self.changed.clear()
            await self.changed.wait()
        messages, self.outbox = self.outbox, []
        if not self.task.done():
            return messages, False, None
        if self.task.cancelled():  # by the replica's shutdown: the caller did not ask for it
            return messages, True, RequestCancelledError(f"call {self.request_id} was cancelled")
        return messages, True, self.error

    async def cancel(self) -> None:
        """Cancel the user's code and wait until it has really stopped."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((self.task,))


class ReplicaActor:
    """The actor class: a `ReplicaRuntime` and the calls in progress on it."""

    def __init__(self, owner: str, path: list[str], spec_data: bytes) -> None:
        os.environ.pop(BACKEND_ENV, None)  # this process's own deployments, if any, stay in it
        sys.path += [entry for entry in path if entry not in sys.path]
        register_serializers()
        registry.upstream = RayUpstream
        self.owner = owner
        self.name = "replica"
        self.exchanges: dict[str, Exchange] = {}
        self.started = False
        self.error: BaseException | None = None
        try:
            spec = pickle.loads(spec_data)
            self.name = f"{spec.deployment_name} replica {spec.replica_id}"
            self.runtime = ReplicaRuntime(spec)
        except BaseException as exc:
            self.error = remote_error(exc, "the replica's constructor")

    def __repr__(self) -> str:  # Ray prefixes the actor's output with this
        return self.name

    async def ready(self) -> tuple[str, BaseException | None]:
        return self.owner, self.error

    async def start(self) -> None:
        if not self.started:  # once, though every server sharing the actor asks
            self.started = True
            await self.runtime.start()

    async def begin(self, call: Call, first: Message | None) -> Batch:
        exchange = self.exchanges[call.request_id] = Exchange(self.runtime, call, first)
        try:
            batch = await exchange.batch()
        except asyncio.CancelledError:
            await exchange.cancel()
            raise
        finally:
            if exchange.task.done():
                self.exchanges.pop(call.request_id, None)
        return batch

    async def more(self, request_id: str) -> AsyncIterator[Batch]:
        exchange = self.exchanges[request_id]
        try:
            while True:
                batch = await exchange.batch()
                yield batch
                if batch[1]:
                    return
        except asyncio.CancelledError:
            await exchange.cancel()
            raise
        finally:
            if exchange.task.done():
                self.exchanges.pop(request_id, None)

    async def deliver(self, request_id: str, message: Message) -> None:
        exchange = self.exchanges.get(request_id)
        if exchange is not None and exchange.inbox is not None and not exchange.inbox.done():
            exchange.inbox.set_result(message)

    async def cancel(self, request_id: str) -> None:
        exchange = self.exchanges.pop(request_id, None)
        if exchange is not None:
            await exchange.cancel()

    async def check_health(self) -> None:
        await self.runtime.check_health()

    async def stop(self, timeout_s: float) -> None:
        await drain({exchange.task for exchange in self.exchanges.values()}, timeout_s)
        await self.runtime.stop(timeout_s)


class RayUpstream:
    """A handle's calls from inside an actor, sent straight to its deployment's actors."""

    closed = False

    def __init__(self, app_name: str, deployment_name: str) -> None:
        self.prefix = f"{app_name}#{deployment_name}#"
        self.target = f"{app_name}/{deployment_name}"
        self.replicas: list[RayReplica] = []

    def find(self) -> list[RayReplica]:
        found = [
            RayReplica(ray.get_actor(actor["name"], NAMESPACE), actor["name"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == NAMESPACE and actor["name"].startswith(self.prefix)
        ]
        if not found:
            raise DeploymentUnavailableError(
                f"no Ray replica of {self.target} is running; from a Ray replica, handles "
                "reach deployments on the ray backend only"
            )
        return found

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        while True:
            if not self.replicas:
                self.replicas = await asyncio.to_thread(self.find)
            replica = min(self.replicas, key=lambda replica: replica.in_flight)
            try:
                await replica.handle(call, receive, send)
                return
            except ReplicaDiedError as exc:
                self.replicas = [other for other in self.replicas if other is not replica]
                if exc.sent:
                    raise


# -- in the server -------------------------------------------------------------------------


class Pulls:
    """The server's answers to a replica's `receive()` calls; a failing one ends the call."""

    def __init__(self, actor: Any, request_id: str, receive: Receive) -> None:
        self.actor = actor
        self.request_id = request_id
        self.receive = receive
        self.tasks: list[asyncio.Task[None]] = []
        self.error: Exception | None = None
        caller = asyncio.current_task()
        assert caller is not None
        self.caller = caller

    def start(self) -> None:
        self.tasks.append(asyncio.ensure_future(self.pull()))

    async def pull(self) -> None:
        try:
            message = await self.receive()
        except Exception as exc:
            self.error = exc
            self.caller.cancel()
            return
        with contextlib.suppress(RayActorError):
            await self.actor.deliver.remote(self.request_id, message)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


async def forward(messages: list[Message], send: Send, pulls: Pulls) -> None:
    for message in messages:
        if message["type"] == PULL:
            pulls.start()
        else:
            await send(message)


class RayReplica(Replica):
    """An actor as the scheduler sees it; `maker` is our backend if this process made it."""

    def __init__(self, actor: Any, replica_id: str, maker: RayBackend | None = None) -> None:
        self.actor = actor
        self.replica_id = replica_id
        self.maker = maker
        self.dead = False
        self.in_flight = 0

    def died(self, exc: BaseException) -> ReplicaDiedError:
        self.dead = True
        return ReplicaDiedError(f"replica {self.replica_id} (a Ray actor) died: {exc}", sent=True)

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        if self.dead:
            raise ReplicaDiedError(f"replica {self.replica_id} (a Ray actor) died", sent=False)
        first = None
        if call.kind == "asgi":
            assert call.scope is not None
            call.scope = wire_scope(call.scope)  # the router made this call for us alone
            first = await receive()
        pulls = Pulls(self.actor, call.request_id, receive)
        self.in_flight += 1
        try:
            await self.exchange(call, first, send, pulls)
        except asyncio.CancelledError:
            if pulls.error is None:
                raise
            pulls.caller.uncancel()  # our own receive failed (a body over the limit)
            raise pulls.error from None
        finally:
            self.in_flight -= 1
            pulls.close()

    async def exchange(self, call: Call, first: Message | None, send: Send, pulls: Pulls) -> None:
        request_id = call.request_id
        pending: Any = self.actor.begin.remote(call, first)
        try:
            messages, done, error = await pending
            pending = None
            await forward(messages, send, pulls)
            if not done:
                pending = self.actor.more.options(num_returns="streaming").remote(request_id)
                async for ref in pending:
                    messages, done, error = await ref
                    await forward(messages, send, pulls)
                pending = None
        except asyncio.CancelledError:
            await self.cancel(request_id, pending)
            raise
        except RayActorError as exc:
            raise self.died(exc) from None
        if error is not None:
            raise error

    async def cancel(self, request_id: str, pending: Any) -> None:
        """`ray.cancel` the call, then hold our slot until the user's code has stopped."""
        if pending is not None:
            # Not recursive: the handler's own calls are cancelled by asyncio, as on every
            # backend, so that what it shields from the cancel (asyncio.shield) goes on.
            ray.cancel(pending, recursive=False)
            with contextlib.suppress(Exception):
                if isinstance(pending, ray.ObjectRefGenerator):
                    async for _ in pending:
                        pass
                else:
                    await pending
        # The call may have been between two actor calls, where ray.cancel cannot reach it.
        with contextlib.suppress(Exception):
            await self.actor.cancel.remote(request_id)

    async def start(self) -> None:
        try:
            await self.actor.start.remote()
        except RayActorError as exc:
            raise self.died(exc) from None

    async def check_health(self) -> None:
        if self.dead:
            raise ReplicaDiedError(f"replica {self.replica_id} (a Ray actor) died")
        try:
            await self.actor.check_health.remote()
        except RayActorError as exc:
            raise self.died(exc) from None

    async def stop(self, timeout_s: float) -> None:
        """Drain and kill the actor if this process made it; others' actors are theirs."""
        if self.maker is None:
            return
        if not self.dead:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(self.actor.stop.remote(timeout_s), timeout_s + 5)
        await asyncio.to_thread(kill, self.actor, self.replica_id)
        self.maker.live.discard(self.replica_id)


@functools.cache
def actor_class() -> Any:
    return ray.remote(ReplicaActor)


def kill(actor: Any, name: str) -> None:
    """Kill an actor and wait until its name is free for the next deployment to use."""
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, NAMESPACE)
        except ValueError:
            return
        time.sleep(0.02)


class RayBackend(Backend):
    """Each replica a Ray actor; Ray places it by its `ray_actor_options`.

    `address` (or `RAY_ADDRESS`) names a running cluster, `"auto"` the one on this machine;
    with neither, Ray is started here on first use and stopped by `asgiserve.shutdown()`.
    Other `ray.init` options (`num_cpus`, `runtime_env`, ...) go in `init_options`.
    """

    name = "ray"
    starts_in_parallel = True

    def __init__(self, address: str | None = None, **init_options: Any) -> None:
        self.address = address
        self.init_options = init_options
        self.owner = uuid.uuid4().hex  # marks the actors this process makes
        self.lock = threading.Lock()
        self.started_ray = False
        self.live: set[str] = set()  # names of actors this process made and still uses

    def connect(self) -> None:
        with self.lock:
            if ray.is_initialized():
                register_serializers()
                return
            main = threading.current_thread() is threading.main_thread()
            handler = signal.getsignal(signal.SIGTERM) if main else None
            ray.init(address=self.address, log_to_driver=True, **self.init_options)
            if main:  # ray.init replaces it; the web server's own must stay
                signal.signal(signal.SIGTERM, handler)
            self.started_ray = True
            register_serializers()

    def start_replica(self, spec: ReplicaSpec) -> Replica:
        self.connect()
        name = spec.replica_id
        with self.lock:
            n = 1
            while name in self.live:  # this process redeployed the application under it
                n += 1
                name = f"{spec.replica_id}.{n}"
            self.live.add(name)
        try:
            return self.create(spec, name)
        except BaseException:
            self.live.discard(name)
            raise

    def create(self, spec: ReplicaSpec, name: str) -> RayReplica:
        options = dict(spec.config.ray_actor_options or {})
        actor = actor_class().options(
            name=name, namespace=NAMESPACE, get_if_exists=True, **options
        ).remote(self.owner, list(sys.path), pickle_spec(spec))
        try:
            owner, error = ray.get(actor.ready.remote())
        except RayActorError as exc:
            raise ReplicaDiedError(
                f"replica {name} (a Ray actor) died while starting: {exc}"
            ) from None
        if error is not None:
            if owner == self.owner:
                kill(actor, name)
            raise error
        if owner != self.owner:  # another server made it: shared, and stopped by them
            self.live.discard(name)
            return RayReplica(actor, name)
        return RayReplica(actor, name, self)

    def close(self) -> None:
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
