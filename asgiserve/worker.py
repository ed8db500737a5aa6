"""A worker process of the subprocess backend: one replica, served over an inherited socket.

Started as `python -m asgiserve.worker FD MAX_FRAME_SIZE` by `SubprocessBackend`, it reads its
`ReplicaSpec` from the socket, builds the `ReplicaRuntime` and answers READY (or the
constructor's error), then serves calls until told to stop or until the server goes away.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from starlette.types import Receive, Send

from asgiserve import logs, registry
from asgiserve.backends.base import RESULT, Call
from asgiserve.backends.channel import END, Channel, Target
from asgiserve.backends.wire import read_frame, remote_error, write_frame
from asgiserve.exceptions import DeploymentUnavailableError
from asgiserve.loops import serving_loop
from asgiserve.replica import ReplicaRuntime, drain
from asgiserve.shipping import load_spec

PARENT_POLL_S = 0.5


class Upstream:
    """A handle's calls from inside this worker, sent to the server process to dispatch."""

    closed = False

    def __init__(self, channel: Channel, app_name: str, deployment_name: str) -> None:
        self.channel = channel
        self.target = (app_name, deployment_name)

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        await self.channel.call(self.target, call, receive, send)


class Worker:
    """Serves the replica's calls and the backend's control calls (start, health, stop)."""

    def __init__(self, runtime: ReplicaRuntime) -> None:
        self.runtime = runtime
        self.calls: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()

    async def serve(self, target: Target, call: Call, receive: Receive, send: Send) -> None:
        if call.kind == "control":
            value = await getattr(self, call.method)(*call.args)
            if value is not None:
                await send({"type": RESULT, "value": value})
            return
        task = asyncio.current_task(serving_loop())  # given its loop: no getpid() call
        assert task is not None
        self.calls.add(task)
        try:
            await self.runtime.handle(call, receive, send)
        finally:
            self.calls.discard(task)

    async def start(self) -> None:
        await self.runtime.start()

    async def check_health(self) -> Any:
        return await self.runtime.check_health()

    async def metric_samples(self) -> Any:
        return await self.runtime.metric_samples()

    async def stop(self, timeout_s: float) -> None:
        """Let in-flight calls finish within `timeout_s`, cancel the rest, shut the app down."""
        await drain(self.calls, timeout_s)
        try:
            await self.runtime.stop(timeout_s)
        finally:
            asyncio.get_running_loop().call_soon(self.stopped.set)  # after our END is queued


def watch_parent(parent: int) -> None:
    """Exit when the server process is gone, even if user code holds the event loop."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def not_yet(app_name: str, deployment_name: str, version: str) -> Upstream:
    raise DeploymentUnavailableError(
        f"a handle to {app_name}/{deployment_name} was called in a replica's constructor; "
        "on the subprocess backend the way to other deployments opens once the replica is "
        "ready: call it from a method, or from the ingress app's startup event"
    )


async def serve(sock: socket.socket, spec_data: bytes, max_frame_size: int) -> None:
    registry.upstream = not_yet
    try:
        spec = load_spec(spec_data)
        logs.set_up_replica(spec.config.logging_config)
        runtime = await asyncio.to_thread(ReplicaRuntime, spec)
    except BaseException as exc:
        write_frame(sock, (0, END, ([], remote_error(exc, "the replica's constructor"))))
        return
    worker = Worker(runtime)
    name = f"replica {spec.replica_id} (pid {os.getpid()})"
    channel = Channel(worker.serve, name, 2, batch=True, max_frame_size=max_frame_size)
    registry.upstream = lambda app, deployment, version: Upstream(channel, app, deployment)
    write_frame(sock, (0, END, ([], None)))  # ready
    await channel.connect(sock)
    stopped = asyncio.ensure_future(worker.stopped.wait())
    lost = asyncio.ensure_future(channel.lost.wait())
    await asyncio.wait((stopped, lost), return_when=asyncio.FIRST_COMPLETED)
    if not lost.done():
        channel.flush()
        channel.close()  # after the write buffer empties
        await asyncio.wait((lost,), timeout=5)


def main() -> None:
    # Ctrl-C reaches the whole process group; the server, not the signal, stops a worker,
    # after its in-flight calls have finished.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)  # a process the user's code starts must not hold it open
    max_frame_size = int(sys.argv[2])
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        path, spec_data = read_frame(sock, max_frame_size)
    except ConnectionError:
        return  # the server gave up on us before sending our spec
    sys.path[:] = path
    logs.set_up_replica(None)  # until the spec says what its deployment asks for
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(sock, spec_data, max_frame_size))
    else:
        uvloop.run(serve(sock, spec_data, max_frame_size))


if __name__ == "__main__":
    main()
