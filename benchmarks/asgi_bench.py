"""The apps called directly as ASGI callables, in memory: no server, no sockets, no wrk.

    python benchmarks/asgi_bench.py [--requests 20000] [--concurrency 1,64] [--profile APP]

What remains is the cost of the framework itself per request, which makes asgiserve's
overhead over bare Starlette visible without the network and the machine's noise.
`--profile APP` runs APP under cProfile and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apps  # noqa: E402 - needs the path set above

Message = dict[str, Any]
ASGIApp = Any

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
    "state": {},
}


async def one_request(app: ASGIApp) -> int:
    """One GET / through `app`; returns the status code."""
    status = 0
    request_sent = False

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # like a server: nothing more until disconnect
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(SCOPE), receive, send)
    return status


async def worker(app: ASGIApp, count: int) -> None:
    for _ in range(count):
        status = await one_request(app)
        if status != 200:
            raise RuntimeError(f"status {status}")


async def drive(app: ASGIApp, requests: int, concurrency: int) -> float:
    """Requests per second with `concurrency` clients each sending in a loop."""
    await worker(app, 200)  # warm-up; starts the replicas on first use
    started = time.perf_counter()
    await asyncio.gather(*(worker(app, requests // concurrency) for _ in range(concurrency)))
    return (requests // concurrency) * concurrency / (time.perf_counter() - started)


def build(name: str) -> ASGIApp:
    return getattr(importlib.import_module("apps"), apps.FACTORIES[name])()


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(name: str, requests: int, concurrency: int, profile: bool) -> float:
    app = build(name)
    loop = new_loop()
    try:
        if not profile:
            return loop.run_until_complete(drive(app, requests, concurrency))
        profiler = cProfile.Profile()
        profiler.enable()
        rate = loop.run_until_complete(drive(app, requests, concurrency))
        profiler.disable()
        stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
        stats.print_stats(25)
        return rate
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="starlette,asgiserve,asgiserve-wide")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--profile", default=None, help="an app to run under cProfile")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.profile is not None:
        run(args.profile, args.requests, max(levels), profile=True)
        return 0
    print(f"{'app':<18} {'concurrency':>11} {'req/s':>9} {'us/req':>8}")
    for name in args.apps.split(","):
        for concurrency in levels:
            rate = run(name, args.requests, concurrency, profile=False)
            print(f"{name:<18} {concurrency:>11} {rate:>9.0f} {1e6 / rate:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
