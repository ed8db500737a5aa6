"""One private connection between the server process and a worker, carrying many calls.

Both ends are the same `Channel`: either side may start a call (the server calls the
replica; a replica's handles call other deployments through the server). A call is the
ASGI exchange `handle(call, receive, send)` stretched over the connection, one stream id
per call:

    CALL    caller -> callee   the call, with the first `receive()` message already in it
    SEND    callee -> caller   messages for the caller's `send` (start + body travel together)
    PULL    callee -> caller   the callee awaits `receive()`; RECV carries the answer
    END     callee -> caller   finished: trailing messages and the error, if any
    CANCEL  caller -> callee   cancel the callee's task; it still answers END

So a small request is one CALL frame and its response one END frame (frames: `wire.py`);
a worker's frames of one loop turn leave in one write.
Large frames are read into memory of their own, so a numpy array that arrives out of band
is not copied again; that memory grows as the bytes arrive, never on a length's word
alone, and a frame over `max_frame_size` ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message, Receive, Send

from asgiserve.backends.base import ITEM, RESULT, Call
from asgiserve.backends.mailbox import Mailbox
from asgiserve.backends.wire import (
    LENGTH,
    OUT_OF_BAND,
    decode,
    encode,
    remote_error,
)
from asgiserve.exceptions import ReplicaDiedError, RequestCancelledError
from asgiserve.loops import serving_loop

CALL, SEND, PULL, RECV, END, CANCEL = range(6)
FAILED = 6  # not on the wire: our own `receive` failed while answering a PULL
READ_BUFFER = 256 * 1024
BIG_FIRST = 16 * 1024 * 1024  # a large frame's memory starts here and doubles as it fills
DEFAULT_MAX_FRAME_SIZE = 4 * 1024**3  # bytes: room for real arrays, not for a garbled length

logger = logging.getLogger("asgiserve")

Target = tuple[str, str] | None  # (application, deployment) for calls into the server
Serve = Callable[[Target, Call, Receive, Send], Awaitable[None]]


def plain(frame: tuple[int, int, Any]) -> bool:
    """ASGI traffic holds only builtins by the spec: the C pickler's speed will do.

    User values (call arguments, results, stream items, errors) go through cloudpickle,
    which ships `__main__` classes and closures by value.
    """
    _, op, payload = frame
    if op == CALL:
        return bool(payload[1][1] == "asgi")  # the call's kind
    if op == SEND:
        return not any(message["type"] == ITEM for message in payload)
    if op == END:
        messages, error = payload
        return error is None and not any(message["type"] == RESULT for message in messages)
    return True


class Outgoing(Mailbox[tuple[int, Any]]):
    """A call this side made: frames from the callee wait here for the caller's task."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.pulls: list[asyncio.Task[None]] = []


class Incoming:
    """A call the other side made: its task, and the `receive()` answers it waits for."""

    def __init__(self, first: Message | None) -> None:
        self.ready: deque[Message] = deque([first] if first is not None else [])
        self.pulls: deque[asyncio.Future[Message]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.started = False  # a task cancelled before its first step never runs its body
        self.cancelled = False


class Channel(asyncio.BufferedProtocol):
    """Calls both ways over one connection; `serve` runs the calls the other side makes.

    The connection lives on one event loop. Callers on other loops (a handle's synchronous
    caller on the background loop) get their messages handed over thread-safely.
    """

    def __init__(
        self,
        serve: Serve,
        name: str,
        first_id: int,
        batch: bool = False,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.serve = serve
        self.name = name
        self.batch = batch
        self.max_frame_size = max_frame_size
        self.ids = itertools.count(first_id, 2)  # the two ends use odd and even ids
        self.outgoing: dict[int, Outgoing] = {}
        self.incoming: dict[int, Incoming] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: BaseException | None = None
        self.outbox: list[bytes | memoryview] = []
        self.lost = asyncio.Event()
        self.keeper: asyncio.Task[None] | None = None
        # reading
        self.buffer = bytearray(READ_BUFFER)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0
        self.big: bytearray | None = None
        self.big_filled = 0
        self.big_length = 0

    async def connect(self, sock: socket.socket) -> None:
        """Serve the connection on the running loop, until it is lost or the loop ends."""
        self.loop = asyncio.get_running_loop()
        self.lost = asyncio.Event()
        await self.loop.create_unix_connection(lambda: self, sock=sock)
        self.keeper = self.loop.create_task(self.close_with_loop())

    async def close_with_loop(self) -> None:
        """A loop that ends (`asyncio.run`, a `TestClient` portal) cancels its tasks, this
        one too: the transport closes with it instead of leaking its socket."""
        try:
            await self.lost.wait()
        finally:
            self.close()

    # -- writing ---------------------------------------------------------------------

    def write(self, frame: Any) -> None:
        """Send a frame now, or with the others of this loop turn when `batch` is set.

        The server sends at once, so a worker starts on a call while the server's busy
        loop goes on (the two processes work side by side: batching the server's calls too
        cost a third of the calls per second with 100 in flight); a worker batches, so a
        response and its END leave together. A frame of the only call on the channel
        leaves at once: nothing would join it this turn.
        """
        if self.closed is not None:
            return
        if not self.batch or len(self.outgoing) + len(self.incoming) <= 1:
            self.outbox.extend(encode(frame, plain(frame)))
            self.flush()
            return
        if not self.outbox:
            assert self.loop is not None
            self.loop.call_soon(self.flush)
        self.outbox.extend(encode(frame, plain(frame)))

    def flush(self) -> None:
        if self.transport is None:
            return  # still connecting: `connection_made` sends them
        pieces, self.outbox = self.outbox, []
        if self.closed is not None or not pieces:  # closed, or sent already
            return
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        elif all(len(piece) < OUT_OF_BAND for piece in pieces):
            self.transport.write(b"".join(pieces))
        else:
            for piece in pieces:  # large buffers go as they are, not joined into a copy
                self.transport.write(piece)

    def write_from(self, loop: asyncio.AbstractEventLoop, frame: Any) -> None:
        """`write` from a caller on any loop."""
        if loop is self.loop:
            self.write(frame)
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.write, frame)

    # -- calls this side makes -------------------------------------------------------

    async def call(self, target: Target, call: Call, receive: Receive, send: Send) -> None:
        """Run `call` on the other side; raises what it raised, `ReplicaDiedError` if it died."""
        if self.closed is not None:
            raise ReplicaDiedError(f"{self.name} is gone: {self.closed}", sent=False)
        loop = serving_loop()
        first = await receive() if call.kind == "asgi" else None
        stream_id = next(self.ids)
        stream = Outgoing(loop)
        self.outgoing[stream_id] = stream
        if self.closed is not None:  # lost while we read the body: nobody will answer
            del self.outgoing[stream_id]
            # A body already read cannot be read again for another replica: no retry then.
            raise ReplicaDiedError(f"{self.name} is gone: {self.closed}", sent=first is not None)
        fields = (call.request_id, call.kind, call.method, call.args, call.kwargs, call.scope,
                  call.route, call.replica_id, call.model_id, call.trace)  # fmt: skip
        self.write_from(loop, (stream_id, CALL, (target, fields, first)))
        ended = False
        try:
            while True:
                op, payload = await stream.get()
                if op == SEND:
                    for message in payload:
                        await send(message)
                elif op == PULL:
                    stream.pulls.append(loop.create_task(self.answer(stream, stream_id, receive)))
                elif op == FAILED:
                    raise payload
                else:
                    ended = True
                    messages, error = payload
                    for message in messages:
                        await send(message)
                    if error is not None:
                        raise error
                    return
        except BaseException:
            if not ended:  # cancelled, or our `send` failed: stop the callee, wait for its END
                self.write_from(loop, (stream_id, CANCEL, None))
                await self.drain(stream)
            raise
        finally:
            del self.outgoing[stream_id]
            for task in stream.pulls:
                task.cancel()

    async def drain(self, stream: Outgoing) -> None:
        """Wait for END, dropping what comes before it, however often we are cancelled."""
        while True:
            get = asyncio.ensure_future(stream.get())
            while not get.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(get)
            if get.result()[0] == END:
                return

    async def answer(self, stream: Outgoing, stream_id: int, receive: Receive) -> None:
        try:
            message = await receive()
        except Exception as exc:  # a body past max_body_size: the caller's call fails with it
            stream.put((FAILED, exc))
            return
        self.write_from(stream.loop, (stream_id, RECV, message))

    # -- calls the other side makes --------------------------------------------------

    def start_incoming(
        self, stream_id: int, target: Target, fields: tuple[Any, ...], first: Message
    ) -> None:
        call = Call(*fields)  # a tuple on the wire: no class for the pickler to look up
        stream = Incoming(first)
        self.incoming[stream_id] = stream
        assert self.loop is not None
        stream.task = self.loop.create_task(self.run_incoming(stream_id, stream, target, call))

    async def run_incoming(
        self, stream_id: int, stream: Incoming, target: Target, call: Call
    ) -> None:
        held: list[Message] = []  # a response start waits for its first body chunk
        loop = self.loop
        assert loop is not None

        async def receive() -> Message:
            if stream.ready:
                return stream.ready.popleft()
            pull: asyncio.Future[Message] = loop.create_future()
            stream.pulls.append(pull)
            self.write((stream_id, PULL, None))
            return await pull

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start" or kind == RESULT:
                held.append(message)  # RESULT is always last: it rides on END
                return
            if kind == "http.response.body" and not message.get("more_body", False):
                if type(message.get("body", b"")) is bytes:  # immutable: safe to send later
                    # The response's last message rides on END when the call ends in this
                    # loop turn, as most do: one frame less. A background task still
                    # running at the turn's end lets it leave alone.
                    held.append(message)
                    loop.call_soon(send_held)
                    return
            if held:
                self.write((stream_id, SEND, [*held, message]))
                held.clear()
            else:
                self.write((stream_id, SEND, [message]))

        def send_held() -> None:
            if held:
                self.write((stream_id, SEND, [*held]))
                held.clear()

        error: BaseException | None = None
        stream.started = True
        try:
            if stream.cancelled:  # CANCEL came with the CALL, before this task could start
                raise asyncio.CancelledError
            await self.serve(target, call, receive, send)
        except asyncio.CancelledError:
            if not stream.cancelled:
                raise  # the channel itself is closing
            error = RequestCancelledError(f"call {call.request_id} was cancelled")
        except Exception as exc:
            error = remote_error(exc, self.name)
        finally:
            self.incoming.pop(stream_id, None)
        self.write((stream_id, END, (held, error)))
        held.clear()  # gone with END, not again with `send_held`

    # -- reading ---------------------------------------------------------------------

    def dispatch(self, frame: tuple[int, int, Any]) -> None:
        stream_id, op, payload = frame
        if op == CALL:
            self.start_incoming(stream_id, *payload)
        elif op == RECV or op == CANCEL:
            incoming = self.incoming.get(stream_id)
            if incoming is None:
                return
            if op == CANCEL:
                incoming.cancelled = True
                if incoming.started:
                    assert incoming.task is not None
                    incoming.task.cancel()
                return
            while incoming.pulls:
                pull = incoming.pulls.popleft()
                if not pull.done():
                    pull.set_result(payload)
                    return
            incoming.ready.append(payload)  # its reader gave up; the next `receive` gets it
        else:
            outgoing = self.outgoing.get(stream_id)
            if outgoing is None:
                return
            if outgoing.loop is self.loop:
                outgoing.put((op, payload))
            else:
                with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                    outgoing.loop.call_soon_threadsafe(outgoing.put, (op, payload))

    def get_buffer(self, sizehint: int) -> memoryview:
        big = self.big
        if big is not None:
            if self.big_filled == len(big):  # grown here: no view of it is held now
                big.extend(bytes(min(len(big), self.big_length - len(big))))
            return memoryview(big)[self.big_filled :]
        if self.end == len(self.buffer):  # move the unread part to the front
            unread = self.end - self.start
            self.buffer[:unread] = self.buffer[self.start : self.end]
            self.start, self.end = 0, unread
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.big is not None:
            self.big_filled += nbytes
            if self.big_filled == self.big_length:
                body, self.big = self.big, None
                self.dispatch(decode(memoryview(body), owned=True))
            return
        self.end += nbytes
        while self.end - self.start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self.buffer, self.start)
            available = self.end - self.start - LENGTH.size
            body_start = self.start + LENGTH.size
            if available >= length:
                self.start = body_start + length
                self.dispatch(decode(self.view[body_start : self.start], owned=False))
            elif length > self.max_frame_size:
                logger.error(
                    "%s sent a frame of %d bytes, over max_frame_size=%d; closing its channel",
                    self.name, length, self.max_frame_size,
                )  # fmt: skip
                assert self.transport is not None
                self.transport.abort()
                self.start = self.end = 0
                return
            elif length > len(self.buffer) // 2:  # a large frame: read it into its own memory
                self.big = bytearray(max(available, min(length, BIG_FIRST)))
                self.big[:available] = self.view[body_start : self.end]
                self.big_filled = available
                self.big_length = length
                self.start = self.end = 0
                return
            else:
                break
        if self.start == self.end:
            self.start = self.end = 0

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's are not subclasses
        if self.outbox:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or ConnectionError("connection closed")
        died = ReplicaDiedError(f"{self.name} died while running this call")
        for stream_id in list(self.outgoing):
            self.dispatch((stream_id, END, ([], died)))
        for incoming in list(self.incoming.values()):
            if incoming.task is not None:
                incoming.task.cancel()
        self.lost.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
