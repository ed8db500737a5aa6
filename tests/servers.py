"""Real uvicorn and Hypercorn servers on loopback ports, each in a thread of its own."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

SERVERS = ("uvicorn", "hypercorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, kind: str, port: int, root_path: str = "") -> None:
        self.kind = kind
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.root_path = root_path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def wait_for_port(
    port: int, server: threading.Thread | subprocess.Popen[Any], timeout: float = 15
) -> None:
    """Until something listens on `port`; fails early if the server (thread or process) ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(server, threading.Thread) and not server.is_alive():
            raise RuntimeError("the server exited before it listened")
        if isinstance(server, subprocess.Popen) and server.poll() is not None:
            raise RuntimeError("the server exited before it listened")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


@contextmanager
def serve(
    app: Any, kind: str = "uvicorn", root_path: str = "", **options: Any
) -> Iterator[LiveServer]:
    """Serve `app` with a real server until the block ends."""
    port = free_port()
    if kind == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            root_path=root_path,
            lifespan=options.pop("lifespan", "auto"),
            **options,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for_port(port, thread)
            yield LiveServer(kind, port, root_path)
        finally:
            server.should_exit = True
            thread.join(15)
    elif kind == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.root_path = root_path
        config.loglevel = "WARNING"
        for key, value in options.items():
            setattr(config, key, value)
        stop = threading.Event()

        async def main() -> None:
            stopped = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.02)
                stopped.set()

            watcher = asyncio.ensure_future(watch())
            await hypercorn_serve(app, config, shutdown_trigger=stopped.wait)
            watcher.cancel()

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        try:
            wait_for_port(port, thread)
            yield LiveServer(kind, port, root_path)
        finally:
            stop.set()
            thread.join(15)
    else:
        raise ValueError(kind)
