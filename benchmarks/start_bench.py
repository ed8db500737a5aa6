"""How long a subprocess replica of a FastAPI app takes to start, imported by name (the
default for code in a module) against shipped by value (what `__main__` code gets), in
the same run; and whether event loops that call a worker leave descriptors behind.

A start is `asgiserve.run()` (spawn, import or unpickle, the constructor) plus the first
handle call (the app's startup). Rounds alternate the two ways, so noise hits both alike.

    python benchmarks/start_bench.py --rounds 10 --loops 1000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import runpy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import start_app  # noqa: E402 - imported by name: workers import it too

import asgiserve  # noqa: E402

TARGET_RATIO = 1.2  # by name may cost at most this much more than by value


def by_value() -> Any:
    """The same module run under a name no worker can import, so it travels by value."""
    namespace = runpy.run_path(str(HERE / "start_app.py"), run_name="start_app_by_value")
    return namespace["StartApp"]


def start_once(deployment: Any, name: str) -> float:
    started = time.perf_counter()
    handle = asgiserve.run(deployment.bind(), name=name, route_prefix=None, backend="subprocess")
    assert handle.ping.remote().result() == "pong"
    elapsed = time.perf_counter() - started
    asgiserve.delete(name)
    return elapsed


def open_descriptors() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def descriptors_after_loops(loops: int) -> tuple[int, int]:
    handle = asgiserve.run(start_app.StartApp.bind(), name="loops", route_prefix=None,
                           backend="subprocess")  # fmt: skip

    async def call() -> None:
        assert await handle.ping.remote() == "pong"

    asyncio.run(call())
    before = open_descriptors()
    for _ in range(loops):
        asyncio.run(call())
    after = open_descriptors()
    asgiserve.delete("loops")
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--loops", type=int, default=1000)
    args = parser.parse_args()
    copied = by_value()
    times: dict[str, list[float]] = {"by name": [], "by value": []}
    start_once(start_app.StartApp, "warmup")  # the page cache holds the interpreter now
    for i in range(args.rounds):
        times["by name"].append(start_once(start_app.StartApp, f"name-{i}"))
        times["by value"].append(start_once(copied, f"value-{i}"))
    for way, values in times.items():
        print(f"{way:9} median {statistics.median(values) * 1000:7.1f} ms  "
              f"min {min(values) * 1000:7.1f} ms  ({len(values)} starts)")  # fmt: skip
    ratio = statistics.median(times["by name"]) / statistics.median(times["by value"])
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"by name / by value: {ratio:.3f} (target <= {TARGET_RATIO}: {verdict})")
    before, after = descriptors_after_loops(args.loops)
    print(f"open descriptors: {before} before, {after} after {args.loops} event loops "
          f"(target: equal +-2: {'met' if abs(after - before) <= 2 else 'MISSED'})")  # fmt: skip
    asgiserve.shutdown()


if __name__ == "__main__":
    main()
