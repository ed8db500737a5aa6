"""Handle calls per second from the serving process, with a fixed number in flight, and
items per second from a streaming handle call.

One noop method per backend; `--in-flight` calls are kept outstanding at all times (as a
busy app's endpoints would), for `--duration` seconds, on uvloop. Reported per backend and
per `max_ongoing_requests` setting (the default, 5, queues most calls in this process).
Then one `handle.options(stream=True)` call reads `--items` small items from an async
generator method (Ray Serve's handle streaming: about 2,900 items/s on this machine).

    python benchmarks/handle_bench.py --in-flight 100 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import asgiserve

TARGET_SUBPROCESS_CALLS_S = 10_000  # 100 in flight, subprocess backend


class Noop:
    async def ping(self, value: int) -> int:
        return value

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


async def calls_per_second(
    backend: str, max_ongoing: int | None, in_flight: int, duration: float
) -> float:
    options = {} if max_ongoing is None else {"max_ongoing_requests": max_ongoing}
    deployment = asgiserve.deployment(Noop).options(**options)
    name = f"{backend}-{max_ongoing}"
    ping = asgiserve.run(deployment.bind(), name=name, route_prefix=None, backend=backend).ping
    await ping.remote(0)
    done = 0
    deadline = time.perf_counter() + duration

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await ping.remote(done)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    rate = done / (time.perf_counter() - started)
    asgiserve.delete(name)
    return rate


async def items_per_second(backend: str, items: int) -> float:
    name = f"{backend}-stream"
    handle = asgiserve.run(asgiserve.deployment(Noop).bind(), name=name, route_prefix=None,
                           backend=backend)  # fmt: skip
    count = handle.options(method_name="count", stream=True)
    async for _ in count.remote(10):  # warm-up
        pass
    started = time.perf_counter()
    received = 0
    async for _ in count.remote(items):
        received += 1
    rate = received / (time.perf_counter() - started)
    asgiserve.delete(name)
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--backends", default="inprocess,subprocess")
    parser.add_argument("--items", type=int, default=50_000)
    options = parser.parse_args()
    print(f"{'backend':<12}{'max_ongoing':>12}{'calls/s':>12}")
    for backend in options.backends.split(","):
        for max_ongoing in (None, options.in_flight):
            rate = await calls_per_second(backend, max_ongoing, options.in_flight, options.duration)
            setting = "default" if max_ongoing is None else str(max_ongoing)
            print(f"{backend:<12}{setting:>12}{rate:>12.0f}", flush=True)
            if backend == "subprocess" and max_ongoing is None:
                met = rate >= TARGET_SUBPROCESS_CALLS_S
                print(
                    f"  subprocess, default settings, {options.in_flight} in flight: {rate:.0f} "
                    f"calls/s (target >= {TARGET_SUBPROCESS_CALLS_S}): "
                    f"{'meets' if met else 'MISSES'} target"
                )
    print(f"{'backend':<12}{'stream items/s':>24}")
    for backend in options.backends.split(","):
        rate = await items_per_second(backend, options.items)
        print(f"{backend:<12}{rate:>24.0f}", flush=True)
    await asgiserve.shutdown_async()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
