"""How long `GET /-/metrics` takes to answer, and how big it is, on a realistic server.

Three applications with ten deployments between them (4 + 3 + 3, each ingress calling its
others through handles), two replicas each, half of the applications on the subprocess
backend and the rest in-process; traffic to every deployment first, so every histogram has
samples; then the page is scraped over HTTP from a real uvicorn server.

    python benchmarks/metrics_bench.py [--scrapes 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
import uvicorn

import asgiserve

SIZES = {"alpha": 4, "beta": 3, "gamma": 3}  # deployments per application
BACKENDS = {"alpha": "subprocess", "beta": "inprocess", "gamma": "subprocess"}


@asgiserve.deployment(num_replicas=2)
class Leaf:
    def work(self, x: int) -> int:
        return x + 1


@asgiserve.deployment(num_replicas=2)
class Ingress:
    def __init__(self, *leaves: Any) -> None:
        self.leaves = leaves

    async def __call__(self) -> int:
        total = 0
        for leaf in self.leaves:
            total += await leaf.work.remote(total)
        return total


def deploy() -> None:
    for name, size in SIZES.items():
        leaves = [Leaf.options(name=f"Leaf{i}").bind() for i in range(size - 1)]
        asgiserve.run(Ingress.bind(*leaves), name=name, route_prefix=f"/{name}",
                      backend=BACKENDS[name])  # fmt: skip


def serve(port: int) -> uvicorn.Server:
    config = uvicorn.Config(asgiserve.router, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--port", type=int, default=8761)
    args = parser.parse_args(argv)
    deploy()
    server = serve(args.port)
    base = f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for name in SIZES:
                for _ in range(20):
                    assert client.get(f"/{name}").status_code == 200
            times, sizes = [], []
            for _ in range(args.scrapes):
                started = time.perf_counter()
                response = client.get("/-/metrics")
                times.append((time.perf_counter() - started) * 1000)
                sizes.append(len(response.content))
            series = sum(1 for line in response.text.splitlines() if not line.startswith("#"))
    finally:
        server.should_exit = True
        asgiserve.shutdown()
    times.sort()
    print(f"{len(SIZES)} applications, {sum(SIZES.values())} deployments, 2 replicas each, "
          f"backends inprocess+subprocess; {args.scrapes} scrapes of /-/metrics")  # fmt: skip
    print(f"time to answer: median {statistics.median(times):.1f} ms, "
          f"p99 {times[int(len(times) * 0.99) - 1]:.1f} ms, max {times[-1]:.1f} ms")  # fmt: skip
    print(f"size: {statistics.median(sizes) / 1024:.0f} KiB, {series} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
