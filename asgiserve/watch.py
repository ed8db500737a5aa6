"""Noticing that an HTTP client has gone, so its request can be cancelled.

A server's `receive` must have one reader. The handler reads the body through
`RequestWatch.receive`; if the request is still running after `WATCH_AFTER_S`, a watcher
task takes over reading the server's `receive` (queueing what the handler has not read
yet) and cancels the request's task on `http.disconnect`. A fast request is over before
then and never pays for the task; a client that leaves is noticed within a few ms.

The requests of one event loop wait for their watch in one `Watchlist`, with one timer
between them that ticks every `WATCH_AFTER_S` while any waits: a request is watched from
the first tick after one whole period, so after one to two periods. A timer or a clock
reading per request cost a tenth of an in-process request's time.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from typing import Any

from starlette.types import Message, Receive

from asgiserve.loops import serving_loop

DISCONNECT: Message = {"type": "http.disconnect"}
WATCH_AFTER_S = 0.001  # a request to a worker process takes ~0.2 ms: most never need a watcher


READ_AHEAD = 64 * 1024  # body bytes read for a request before its handler asks for them


class BodyTooLarge(Exception):
    """Raised while reading a body past `max_body_size`; the router answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes (max_body_size)")


class BodyTimeout(Exception):
    """The client stopped sending its body for `body_timeout_s`; the router answers 408."""

    def __init__(self, limit: float) -> None:
        super().__init__(
            f"the request body stopped arriving for {limit:g} s (body_timeout_s); "
            "send the whole body without pauses"
        )


class Watchlist:
    """The requests of one event loop not yet watched, oldest first, each with the period
    it arrived in; the timer ends a period every `WATCH_AFTER_S` while any waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[RequestWatch, int] = {}  # insertion order is arrival order
        self.period = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, watch: RequestWatch) -> None:
        if self.timer is None:
            self.arm()
        self.waiting[watch] = self.period

    def arm(self) -> None:
        self.period += 1
        # A context of its own: a copy of the request's would keep its objects alive.
        self.timer = self.loop.call_later(WATCH_AFTER_S, self.tick, context=contextvars.Context())

    def discard(self, watch: RequestWatch) -> None:
        self.waiting.pop(watch, None)

    def tick(self) -> None:
        """A period has ended: watch every request that arrived before it began."""
        self.timer = None
        ended = self.period
        waiting = self.waiting
        while waiting:
            watch, period = next(iter(waiting.items()))
            if period == ended:
                break
            del waiting[watch]
            watch.start()
        if waiting:
            self.arm()


this_thread = threading.local()


def watchlist() -> Watchlist:
    """The running loop's watchlist; a thread runs one loop at a time, so one per thread,
    and the one made for a loop still running is this loop's (as in `serving_loop`)."""
    found: Watchlist | None = getattr(this_thread, "watchlist", None)
    if found is None or not found.loop.is_running():
        found = this_thread.watchlist = Watchlist(serving_loop())
    return found


class RequestWatch:
    """The disconnect watch of one HTTP request; the router's `Exchange` is one, so that a
    request costs one object. It sets `server_receive`, `task`, `max_body_size`,
    `body_timeout_s`, `expects_body` and `watchlist`, and marks `complete` once the
    response is sent.

    The watcher reads at most `READ_AHEAD` bytes of body before the handler asks for
    them (the rest stays in the server's flow control), so a queued or slow request holds
    no more than that; body bytes count against `max_body_size` as they arrive.
    """

    server_receive: Receive
    task: asyncio.Task[Any]
    max_body_size: int
    body_timeout_s: float | None
    expects_body: bool  # a Content-Length above 0, or a chunked body
    watchlist: Watchlist
    # Class-level defaults: a fast request sets none of these.
    pending: deque[Message] | None = None
    arrived: asyncio.Future[None] | None = None
    room: asyncio.Future[None] | None = None  # the watcher waits for the handler to read
    watcher: asyncio.Task[None] | None = None
    failure: Exception | None = None  # the body failed (too large, too slow): the handler's
    ahead = 0  # body bytes read from the server that the handler has not taken yet
    reading = 0  # handler calls now inside the server's receive
    wanted = False  # the watch was due while the handler was reading
    complete = False  # the response has been sent in full, or the request is over
    disconnected = False
    cancelled_request = False
    body_done = False  # the last body message has been read from the server
    body_size = 0

    def start(self) -> None:
        if self.complete or self.watcher is not None or self.disconnected:
            return
        if self.reading:
            self.wanted = True  # take over when the handler's read returns
            return
        if self.pending is None:
            self.pending = deque()
        self.watcher = self.task.get_loop().create_task(self.watch())

    async def watch(self) -> None:
        try:
            await self.read_until_disconnect()
        except asyncio.CancelledError:
            # `close` cancels us; ending quietly leaves no exception, traceback and frames
            # in a reference cycle for the garbage collector (a third of a busy server's
            # time once every request has a watcher).
            return

    async def read_until_disconnect(self) -> None:
        pending = self.pending
        assert pending is not None
        while not self.disconnected and self.failure is None:
            if self.ahead >= READ_AHEAD and not self.body_done:
                self.room = self.task.get_loop().create_future()
                await self.room  # the handler takes some, or the request ends
                continue
            try:
                message = await self.from_server()
            except (BodyTooLarge, BodyTimeout) as exc:
                self.failure = exc
            else:
                pending.append(message)
                self.ahead += len(message.get("body", b""))
            if self.arrived is not None and not self.arrived.done():
                self.arrived.set_result(None)

    async def from_server(self) -> Message:
        """The server's next message, counted; a body the client stops sending times out."""
        if self.body_done or not self.expects_body or self.body_timeout_s is None:
            message = await self.server_receive()
        else:
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await self.server_receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_done = True
            body = message.get("body")
            if body:
                self.body_size += len(body)
                if self.body_size > self.max_body_size:
                    raise BodyTooLarge(self.max_body_size)
        elif kind == "http.disconnect":
            self.body_done = True
            self.client_left()
        return message

    def client_left(self) -> None:
        self.disconnected = True
        if not self.complete and self.watcher is not None:
            self.cancelled_request = True
            self.task.cancel()

    async def prefetch(self) -> None:
        """Wait for the first body message before any replica slot is taken for it: a
        client that sends headers and then nothing holds no slot, only its timeout."""
        self.reading += 1
        try:
            message = await self.from_server()
        finally:
            self.reading -= 1
        self.pending = deque((message,))
        self.ahead += len(message.get("body", b""))  # counted, so the watcher reads no more
        if self.wanted and not self.disconnected:
            self.wanted = False
            self.start()

    async def receive(self) -> Message:
        pending = self.pending
        if self.watcher is None and not pending:
            self.reading += 1
            try:
                message = await self.from_server()
            finally:
                self.reading -= 1
            if self.wanted and not self.reading and not self.disconnected:
                self.wanted = False
                self.start()
            return message
        assert pending is not None
        while not pending:
            if self.failure is not None:
                raise self.failure
            if self.disconnected:
                return DISCONNECT
            if self.arrived is None or self.arrived.done():
                self.arrived = self.task.get_loop().create_future()
            await asyncio.shield(self.arrived)  # several readers may wait on one arrival
        message = pending.popleft()
        body = message.get("body")
        if body:
            self.ahead -= len(body)
            if self.room is not None and not self.room.done() and self.ahead < READ_AHEAD:
                self.room.set_result(None)
        return message

    def close(self) -> None:
        self.complete = True
        self.watchlist.waiting.pop(self, None)  # `discard`, inline: a call costs a request ~1%
        if self.watcher is not None:
            self.watcher.cancel()
