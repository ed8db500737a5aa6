"""Inside a Ray actor: one replica, and the messages of its calls until the server takes them.

The server side is `asgiserve.backends.ray`; see there how a call crosses.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from starlette.types import Message

from asgiserve import logs, registry
from asgiserve.backends.base import RESULT, Call
from asgiserve.backends.wire import REDUCERS, remote_error
from asgiserve.exceptions import RequestCancelledError
from asgiserve.replica import ReplicaRuntime, drain
from asgiserve.shipping import load_spec

PULL = "asgiserve.pull"  # the replica awaits `receive()`: the server answers with `deliver`

Batch = tuple[list[Message], bool, BaseException | None]  # messages, finished, error


def rebuild(reduced: tuple[Any, tuple[Any, ...]]) -> Any:
    function, args = reduced
    return function(*args)


def register_serializers() -> None:
    """Teach Ray's pickler what ours knows (requests passed to handles, app state, locks)."""
    for cls, reducer in REDUCERS.items():
        ray.util.register_serializer(cls, serializer=reducer, deserializer=rebuild)


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

    def __init__(
        self,
        owner: str,
        upstream: Callable[[str, str, str], registry.Dispatcher],
        path: list[str],
        spec_data: bytes,
    ) -> None:
        sys.path += [entry for entry in path if entry not in sys.path]
        register_serializers()
        registry.upstream = upstream  # handles here call other deployments' actors
        self.owner = owner
        self.name = "replica"
        self.exchanges: dict[str, Exchange] = {}
        self.started = False
        self.error: BaseException | None = None
        try:
            spec = load_spec(spec_data)
            logs.set_up_replica(spec.config.logging_config)
            self.name = f"{spec.deployment_name} replica {spec.replica_id}"
            self.runtime = ReplicaRuntime(spec)
        except BaseException as exc:
            self.error = remote_error(exc, "the replica's constructor")

    def __repr__(self) -> str:  # Ray prefixes the actor's output with this
        return self.name

    async def ready(self) -> tuple[str, BaseException | None]:
        return self.owner, self.error

    async def ingress(self) -> str:
        """The name of this replica's application's ingress deployment."""
        return self.runtime.spec.ingress

    async def start(self) -> None:
        if not self.started:  # once, though every server sharing the actor asks
            self.started = True
            await self.runtime.start()

    async def begin(self, key: str, call: Call, first: Message | None) -> Batch:
        """Start a call, known from now on by `key`: a secret of the server's, unique."""
        exchange = self.exchanges[key] = Exchange(self.runtime, call, first)
        try:
            batch = await exchange.batch()
        except asyncio.CancelledError:
            await exchange.cancel()
            raise
        finally:
            if exchange.task.done():
                self.exchanges.pop(key, None)
        return batch

    async def more(self, key: str) -> AsyncIterator[Batch]:
        exchange = self.exchanges[key]
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
                self.exchanges.pop(key, None)

    async def deliver(self, key: str, message: Message) -> None:
        exchange = self.exchanges.get(key)
        if exchange is not None and exchange.inbox is not None and not exchange.inbox.done():
            exchange.inbox.set_result(message)

    async def cancel(self, key: str) -> None:
        exchange = self.exchanges.pop(key, None)
        if exchange is not None:
            await exchange.cancel()

    async def check_health(self) -> Any:
        return await self.runtime.check_health()

    async def metric_samples(self) -> Any:
        return await self.runtime.metric_samples()

    async def stop(self, timeout_s: float) -> None:
        await drain({exchange.task for exchange in self.exchanges.values()}, timeout_s)
        await self.runtime.stop(timeout_s)
