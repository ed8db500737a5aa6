"""Replicas in worker processes on this machine, over one private socket each.

Workers are fresh interpreters (`python -m asgiserve.worker`, the equivalent of
multiprocessing's spawn), so servers with threads or CUDA are safe to start them. The
only way in is an inherited socket pair: no port, no file another user could open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any

from starlette.types import Message, Receive, Send

from asgiserve import registry
from asgiserve.backends.base import STOP_GRACE_S, Backend, Call, Replica, ReplicaSpec
from asgiserve.backends.channel import DEFAULT_MAX_FRAME_SIZE, Channel, Target
from asgiserve.backends.wire import read_frame, wire_scope, write_frame
from asgiserve.context import new_request_id
from asgiserve.exceptions import ReplicaDiedError
from asgiserve.handle import never
from asgiserve.loops import ignore_outcome
from asgiserve.shipping import pickle_spec, worker_path

EXIT_WAIT_S = 5.0
EXIT_POLL_S = 0.01


def forward_output(stream: IO[bytes], prefix: str) -> None:
    """Replica output (print, logging) goes to our stderr, each line marked with its replica
    (unless its lines are JSON)."""
    for line in iter(stream.readline, b""):
        sys.stderr.write(prefix + line.decode(errors="replace"))
        sys.stderr.flush()
    stream.close()


async def discard(message: Message) -> None:
    pass


async def serve_upstream(target: Target, call: Call, receive: Receive, send: Send) -> None:
    """A handle call made inside a worker, dispatched here to its deployment (any backend)."""
    if target is None:
        raise RuntimeError("a worker sent a call without naming its deployment")
    await registry.get_scheduler(*target).handle(call, receive, send)


class SubprocessReplica(Replica):
    """One worker process. Blocks in `__init__` until the user's constructor has run."""

    def __init__(
        self,
        spec: ReplicaSpec,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        starting: set[subprocess.Popen[bytes]] | None = None,
    ) -> None:
        """`starting` holds the worker while its constructor runs, for `stop_starting`."""
        self.spec = spec
        self.max_frame_size = max_frame_size
        self.replica_id = spec.replica_id
        payload = (worker_path(), pickle_spec(spec))  # before any process: this may fail
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.ids = itertools.count(1, 2)
        self.channel: Channel | None = None
        self.bind_lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asgiserve.worker", str(theirs.fileno()), str(max_frame_size)],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        theirs.close()
        self.name = f"replica {self.replica_id} (pid {self.process.pid})"
        assert self.process.stdout is not None
        json_lines = spec.config.logging_config and spec.config.logging_config.encoding == "JSON"
        # A JSON line names its replica itself, and a mark would make it no JSON.
        mark = "" if json_lines else f"({spec.deployment_name} {self.name}) "
        threading.Thread(
            target=forward_output,
            args=(self.process.stdout, mark),
            name=f"asgiserve-output-{self.process.pid}",
            daemon=True,
        ).start()
        threading.Thread(
            target=self.watch_exit, name=f"asgiserve-exit-{self.process.pid}", daemon=True
        ).start()
        starting = set() if starting is None else starting
        starting.add(self.process)
        try:
            write_frame(ours, payload)
            _, _, (_, error) = read_frame(ours, max_frame_size)
        except ConnectionError:
            code = self.process.wait()
            error = ReplicaDiedError(f"{self.name} exited with code {code} while starting")
        finally:
            starting.discard(self.process)
        if error is not None:
            self.kill()
            raise error

    def connected(self) -> Channel | None:
        channel = self.channel
        if channel is not None and channel.loop is not None and channel.loop.is_running():
            return channel
        return None

    async def channel_here(self) -> Channel:
        """The connection, on the running loop unless a live loop already serves it."""
        with self.bind_lock:
            channel = self.connected()
            if channel is not None:
                return channel
            channel = Channel(serve_upstream, self.name, 1, max_frame_size=self.max_frame_size)
            self.channel = channel
            channel.ids = self.ids  # ids stay unique across the loops that serve us
        # Each loop reads through its own duplicate of the socket: a loop that has ended
        # keeps its transport, and closing that must not close the connection.
        await channel.connect(self.sock.dup())
        return channel

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        channel = self.connected() or await self.channel_here()
        if call.kind == "asgi":
            assert call.scope is not None
            call.scope = wire_scope(call.scope)  # the router made this call for us alone
        await channel.call(None, call, receive, send)

    async def control(self, method: str, *args: Any) -> Any:
        channel = self.connected() or await self.channel_here()
        call = Call(new_request_id(), "control", method, args)
        answer: list[Any] = []

        async def keep(message: Message) -> None:
            answer.append(message.get("value"))

        await channel.call(None, call, never, keep)
        return answer[0] if answer else None

    async def start(self) -> None:
        await self.control("start")

    async def check_health(self) -> Any:
        code = self.process.poll()
        if code is not None:
            raise ReplicaDiedError(f"{self.name} exited with code {code}")
        return await self.control("check_health")

    async def metric_samples(self) -> Any:
        return await self.control("metric_samples")

    async def stop(self, timeout_s: float) -> None:
        """Drain in-flight calls for up to `timeout_s`, then the worker exits (or is killed).

        The stop call is not awaited past its time: a worker that does not answer it (a
        stopped process, a blocked loop) would not answer its cancel either. Killing the
        worker ends it, and every call still waiting on the worker.
        """
        grace = 0.0
        if self.process.poll() is None:
            stopping = asyncio.ensure_future(self.control("stop", timeout_s))
            stopping.add_done_callback(ignore_outcome)
            await asyncio.wait((stopping,), timeout=timeout_s + STOP_GRACE_S)
            grace = EXIT_WAIT_S if stopping.done() else 0.0  # it answered: it is exiting
        # Polled, not waited for in a thread: at interpreter exit (`shutdown_at_exit`) no
        # new thread may start, and the server must not exit before its workers have.
        deadline = time.monotonic() + grace
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(EXIT_POLL_S)
        self.kill()

    def kill(self, grace_s: float = 0) -> None:
        """Wait up to `grace_s` for the worker to exit, then kill it; release the socket."""
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.close_channel()
        self.sock.close()

    def watch_exit(self) -> None:
        """The worker's exit ends its calls at once, even while a child of the worker (a
        `subprocess` it ran) still holds its end of the socket open."""
        self.process.wait()
        self.close_channel()

    def close_channel(self) -> None:
        channel = self.channel
        if channel is not None and channel.loop is not None and not channel.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                channel.loop.call_soon_threadsafe(channel.close)


class SubprocessBackend(Backend):
    """Each replica a worker process: off the server's event loop and GIL, crash-isolated.

    `max_frame_size` caps one message between the server and a worker (a call's
    arguments, a result, a response chunk), both ways: past it the channel is closed.
    """

    name = "subprocess"
    starts_in_parallel = True

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1024 * 1024:
            raise ValueError(f"max_frame_size must be at least 1 MiB, got {max_frame_size}")
        self.max_frame_size = max_frame_size
        self.starting: set[subprocess.Popen[bytes]] = set()

    def start_replica(self, spec: ReplicaSpec) -> Replica:
        return SubprocessReplica(spec, self.max_frame_size, self.starting)

    def stop_starting(self) -> None:
        for process in list(self.starting):
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def close(self) -> None:
        self.stop_starting()

