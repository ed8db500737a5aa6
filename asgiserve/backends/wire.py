"""How values cross between processes: frames, the pickler, and what of a request crosses.

A frame is an 8-byte length, a 2-byte count of out-of-band buffers and their 8-byte
sizes, the pickle (protocol 5), then the buffers. Buffers of `OUT_OF_BAND` bytes or more
(numpy arrays) travel beside the pickle rather than in it, so the reader can keep them
in the memory it read them into instead of copying them out of the pickle.
"""

from __future__ import annotations

import io
import marshal
import pickle
import socket
import struct
import threading
import traceback
import types
from collections.abc import Callable
from typing import IO, Any

import cloudpickle
from starlette.datastructures import State
from starlette.requests import Request
from starlette.types import Message, Scope

from asgiserve.shipping import target_reference

LENGTH = struct.Struct("!Q")  # a frame may hold arrays of several GiB
COUNT = struct.Struct("!H")
HEAD = struct.Struct("!QH")  # a frame's length and count of buffers, when it has none
OUT_OF_BAND = 64 * 1024  # buffers at least this large travel beside the pickle, not in it

# What of an ASGI scope crosses to a worker: the spec's keys, not the server's objects.
WIRE_KEYS = (
    "type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
    "root_path", "headers", "client", "server", "subprotocols", "path_params",
)  # fmt: skip


def wire_scope(scope: Scope) -> Scope:
    return {key: scope[key] for key in WIRE_KEYS if key in scope}


def reduce_request(request: Request) -> tuple[Any, tuple[Scope, bytes]]:
    """A request passed to a handle crosses as its scope and its body, read beforehand."""
    body = getattr(request, "_body", None)  # where Starlette keeps a body once read
    if body is None:
        raise TypeError(
            "a starlette Request can be passed to another process only once its body is "
            "read: `await request.body()` first"
        )
    return (request_from, (wire_scope(request.scope), body))


def request_from(scope: Scope, body: bytes) -> Request:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, receive)
    request._body = body
    return request


# What cloudpickle cannot ship as it is; our `Pickler` and the Ray backend both use these.
REDUCERS: dict[type, Callable[[Any], tuple[Any, tuple[Any, ...]]]] = {
    Request: reduce_request,
    State: lambda state: (State, (dict(state._state),)),
    type(threading.Lock()): lambda lock: (threading.Lock, ()),
    type(threading.RLock()): lambda lock: (threading.RLock, ()),
}


class Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle, plus what apps and requests shipped to a worker hold.

    Starlette's `State` (every app's `app.state`) cannot unpickle itself, and FastAPI keeps
    locks in included routers; a lock arrives as a new one (its state means nothing there).
    A deployment's class goes by reference where the worker can import it (`shipping`);
    code that goes by value keeps its file name, so tracebacks name the user's file
    (cloudpickle's own reducer renames it `<dynamic-code>`).
    """

    # One flat dict: the C pickler looks types up in it directly (a ChainMap costs a
    # Python call and a KeyError for every object that is not a builtin).
    dispatch_table = {**cloudpickle.CloudPickler.dispatch_table, **REDUCERS}

    def __init__(self, file: IO[bytes], protocol: int, buffer_callback: Any = None) -> None:
        super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)
        self.code_files: set[str] = set()  # files of the code that went by value

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            self.code_files.add(obj.co_filename)
            return marshal.loads, (marshal.dumps(obj),)
        if isinstance(obj, (type, types.FunctionType)):
            reference = target_reference(obj)
            if reference is not None:
                return reference
        return super().reducer_override(obj)


BufferCallback = Callable[[pickle.PickleBuffer], bool]


def dumps(value: Any, buffer_callback: BufferCallback | None = None) -> bytes:
    return dumps_with(value, buffer_callback)[0]


def dumps_with(value: Any, buffer_callback: BufferCallback | None = None) -> tuple[bytes, Pickler]:
    """The pickle, and the pickler that made it (which knows what went by value)."""
    file = io.BytesIO()
    pickler = Pickler(file, protocol=5, buffer_callback=buffer_callback)
    pickler.dump(value)
    return file.getvalue(), pickler


def encode(frame: Any, fast: bool = False) -> list[bytes | memoryview]:
    """A frame as the pieces to write: header and pickle, then each out-of-band buffer."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND:
            return True  # in band
        buffers.append(raw)
        return False

    if fast:
        data = pickle.dumps(frame, 5, buffer_callback=out_of_band)
    else:
        data = dumps(frame, out_of_band)
    if not buffers:  # the common case, without building a format for `struct`
        return [HEAD.pack(2 + len(data), 0) + data]
    sizes = [buffer.nbytes for buffer in buffers]
    head = struct.pack(f"!QH{len(sizes)}Q", 2 + 8 * len(sizes) + len(data) + sum(sizes),
                       len(sizes), *sizes)
    return [head, data, *buffers]


def decode(body: memoryview, owned: bool) -> Any:
    """The frame in `body`; out-of-band buffers are copied unless `body` is ours to keep."""
    (count,) = COUNT.unpack_from(body)
    if not count:
        return pickle.loads(body[2:])
    sizes = struct.unpack_from(f"!{count}Q", body, 2)
    end = len(body) - sum(sizes)
    buffers = []
    offset = end
    for size in sizes:
        piece = body[offset : offset + size]
        buffers.append(piece if owned else bytearray(piece))
        offset += size
    return pickle.loads(body[2 + 8 * count : end], buffers=buffers)


def write_frame(sock: socket.socket, frame: Any) -> None:
    """Blocking write, for the start-up handshake before the event loop owns the socket."""
    for piece in encode(frame):
        sock.sendall(piece)


def read_frame(sock: socket.socket, max_size: int) -> Any:
    """Blocking read of exactly one frame, for the start-up handshake."""
    (length,) = LENGTH.unpack(read_exactly(sock, LENGTH.size))
    if length > max_size:
        raise ConnectionError(f"a frame of {length} bytes is over max_frame_size={max_size}")
    return decode(memoryview(read_exactly(sock, length)), owned=True)


def read_exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the other end closed the connection")
        got += n
    return data


def remote_error(exc: BaseException, where: str) -> BaseException:
    """The exception to send back, carrying its traceback as text (tracebacks don't pickle)."""
    text = "".join(traceback.format_exception(exc))
    exc.add_note(f"\n-- traceback in {where} --\n{text}")
    try:
        pickle.loads(dumps(exc))
        return exc
    except Exception:  # an exception that cannot travel: send its text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}\n\n{text}")
