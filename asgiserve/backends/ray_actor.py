"""Inside a Ray actor: one replica, and the messages of its calls until the server takes them.

The server side is `asgiserve.backends.ray`; see there how a call crosses.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from starlette.types import Message

from asgiserve import logs, registry
from asgiserve.backends.base import ITEM, RESULT, Call
from asgiserve.backends.wire import REDUCERS, dumps, remote_error
from asgiserve.exceptions import RequestCancelledError
from asgiserve.replica import ReplicaRuntime, drain
from asgiserve.shipping import load_spec

PULL = "asgiserve.pull"  # the replica awaits `receive()`: the server answers with `deliver`

# One call's news: its key, then its messages, finished, error; or, where they hold user
# values (results, stream items, errors), the pickle of (messages, error), finished.
Entry = tuple[str, list[Message] | bytes, bool, BaseException | None]
USER_VALUES = (RESULT, ITEM)
CANCELLED_KEPT = 1024  # keys cancelled before their call began, kept until it does


def rebuild(reduced: tuple[Any, tuple[Any, ...]]) -> Any:
    function, args = reduced
    return function(*args)


def register_serializers() -> None:
    """Teach Ray's pickler what ours knows (requests passed to handles, app state, locks)."""
    for cls, reducer in REDUCERS.items():
        ray.util.register_serializer(cls, serializer=reducer, deserializer=rebuild)


class Exchange:
    """One call running in a replica; its outgoing messages wait here for the server."""

    def __init__(
        self,
        runtime: ReplicaRuntime,
        key: str,
        call: Call,
        first: Message | None,
        changed: Callable[[Exchange], None],
    ) -> None:
        self.key = key
        self.request_id = call.request_id
        self.first = first
        self.outbox: list[Message] = []
        self.changed = changed  # tells the batch it runs in that it may have news
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
            self.changed(self)

    async def receive(self) -> Message:
        if self.first is not None:
            message, self.first = self.first, None
            return message
        self.inbox = asyncio.get_running_loop().create_future()
        await self.send({"type": PULL})
        return await self.inbox

    async def send(self, message: Message) -> None:
        self.outbox.append(message)
        self.changed(self)

    def worth_sending(self) -> bool:
        """Done, or holding a message the server should have now.

        A lone response start waits for its body (one message less) and a result for the
        end of its call, which follows at once.
        """
        if self.task.done():
            return True
        return bool(self.outbox) and self.outbox[-1]["type"] not in ("http.response.start", RESULT)

    def take(self) -> Entry:
        """What the server gets now: the messages so far and, once done, how it ended."""
        messages, self.outbox = self.outbox, []
        if not self.task.done():
            return self.key, messages, False, None
        if self.task.cancelled():  # by the replica's shutdown or the server's `cancel`
            error = RequestCancelledError(f"call {self.request_id} was cancelled")
            return self.key, messages, True, error
        if self.error is None and not any(message["type"] in USER_VALUES for message in messages):
            return self.key, messages, True, None
        return self.key, pickled(messages, self.error, self.request_id), True, None

    async def cancel(self) -> None:
        """Cancel the user's code and wait until it has really stopped."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((self.task,))


def pickled(messages: list[Message], error: BaseException | None, request_id: str) -> bytes:
    """User values, pickled here rather than by Ray: one that cannot be pickled fails its
    own call, not every call whose messages travel in the same batch."""
    try:
        return dumps((messages, error))
    except Exception as exc:
        failure = remote_error(
            TypeError(f"the result of call {request_id} cannot be pickled: {exc}"), "a replica"
        )
        return dumps(([], failure))


def packed(entries: list[Entry]) -> bytes | list[Entry]:
    """The news as one pickle, which costs the server a fraction of unpacking what Ray's
    serializer makes of it (`ray_link.pack` says why); as it is where pickle fails."""
    try:
        return pickle.dumps(entries, 5)
    except Exception:
        return entries


class Batch:
    """The calls of one `begin` or `more`: whichever has news is taken at the next look."""

    def __init__(self) -> None:
        self.news: dict[str, Exchange] = {}
        self.woken = asyncio.Event()

    def changed(self, exchange: Exchange) -> None:
        self.news[exchange.key] = exchange
        self.woken.set()

    async def ready(self) -> list[Entry]:
        while True:
            news = self.news.values()
            entries = [exchange.take() for exchange in news if exchange.worth_sending()]
            if entries:
                for entry in entries:
                    del self.news[entry[0]]
                return entries
            self.woken.clear()
            await self.woken.wait()


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
        self.cancelled: dict[str, bool] = {}  # insertion-ordered: the oldest goes first
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

    async def begin(
        self, sent: bytes | list[tuple[str, Call, Message | None]]
    ) -> bytes | list[Entry]:
        """Start the calls the server had ready in one turn of its loop; return as soon as
        one has news, with the news of all: for small requests, their whole responses.

        Each call is known from now on by its key: a secret of the server's, unique.
        """
        calls = pickle.loads(sent) if isinstance(sent, bytes) else sent  # `ray_link.pack`
        batch = Batch()
        started = []
        for key, call, first in calls:
            if self.cancelled.pop(key, False):
                continue  # its `cancel` came first (Ray does not keep an async actor's order)
            exchange = self.exchanges[key] = Exchange(self.runtime, key, call, first, batch.changed)
            started.append(exchange)
        try:
            return packed(self.ended(await batch.ready()))
        except asyncio.CancelledError:  # its caller is gone (`ray.cancel`, a dead owner)
            self.abandon(started)
            raise

    @ray.method(num_returns="streaming")
    async def more(self, keys: list[str]) -> AsyncIterator[bytes | list[Entry]]:
        """The rest of the calls `begin` returned before they ended (streams, WebSockets,
        slower handlers), whichever has news, as it comes, until all have ended."""
        batch = Batch()
        running = {key: self.exchanges[key] for key in keys if key in self.exchanges}
        for exchange in running.values():
            exchange.changed = batch.changed
            batch.changed(exchange)  # what it sent since `begin` returned
        try:
            while running:
                entries = self.ended(await batch.ready())
                for entry in entries:
                    if entry[2]:
                        running.pop(entry[0], None)
                yield packed(entries)
        finally:  # closed early: its caller is gone, so are the calls' readers
            self.abandon(list(running.values()))

    def abandon(self, exchanges: list[Exchange]) -> None:
        for exchange in exchanges:
            if not exchange.task.done():
                self.exchanges.pop(exchange.key, None)
                exchange.task.cancel()

    def ended(self, entries: list[Entry]) -> list[Entry]:
        for key, _, done, _ in entries:
            if done:
                self.exchanges.pop(key, None)
        return entries

    async def deliver(self, key: str, message: Message) -> None:
        exchange = self.exchanges.get(key)
        if exchange is not None and exchange.inbox is not None and not exchange.inbox.done():
            exchange.inbox.set_result(message)

    async def cancel(self, key: str) -> None:
        """Cancel a call and return once its code has stopped."""
        exchange = self.exchanges.get(key)
        if exchange is None:  # finished, or its `begin` has not come yet: then it must not run
            self.cancelled[key] = True
            if len(self.cancelled) > CANCELLED_KEPT:
                del self.cancelled[next(iter(self.cancelled))]
            return
        await exchange.cancel()

    async def check_health(self) -> Any:
        return await self.runtime.check_health()

    async def metric_samples(self) -> Any:
        return await self.runtime.metric_samples()

    async def stop(self, timeout_s: float) -> None:
        await drain({exchange.task for exchange in self.exchanges.values()}, timeout_s)
        await self.runtime.stop(timeout_s)
