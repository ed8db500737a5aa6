"""Streaming chunk rate and disconnect-to-cancel latency, asgiserve against bare Starlette.

Each app runs in its own uvicorn subprocess on a loopback port (same settings as
`http_bench.py`). Two figures per app, medians over `--rounds`:

- chunk rate: a raw socket client reads `/stream?n=N` (N small chunks from an async
  generator) to the end; chunks per second from the first byte to the last;
- cancel latency: a client sends `GET /sleep`, waits until the handler is running, closes
  the connection and notes the time; the handler notes when it sees `CancelledError`.
  The difference, over `--disconnects` requests, gives p50 and p99. asgiserve only: bare
  Starlette does not cancel an endpoint when its client leaves.

    python benchmarks/stream_bench.py --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_bench import HOST, ROOT, free_port, stop, uvicorn_settings  # noqa: E402
from stream_apps import FACTORIES  # noqa: E402

# Bare Starlette does not cancel an endpoint when its client leaves: nothing to time there.
CANCELS = ("asgiserve", "asgiserve-subprocess")
TARGET_CHUNK_RATIO = 0.8  # in-process, against bare Starlette
TARGET_SUBPROCESS_CHUNKS_S = 20_000  # the subprocess backend, absolute
TARGET_CANCEL_P99_MS = 20.0


@contextlib.contextmanager
def server(app: str, cancel_log: Path) -> Iterator[int]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory",
        f"stream_apps:{FACTORIES[app]}", "--host", HOST, "--port", str(port),
        *uvicorn_settings(),
    ]  # fmt: skip
    env = {**os.environ, "ASGISERVE_BENCH_CANCEL_LOG": str(cancel_log)}
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{app} server did not start")
            time.sleep(0.05)
        yield port
    finally:
        stop(process)  # type: ignore[arg-type]


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def chunk_rate(port: int, n: int) -> float:
    """Chunks per second for one streamed response of `n` chunks, read to the end."""
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(request(f"/stream?n={n}"))
        first = sock.recv(65536)
        started = time.perf_counter()
        data = first
        while not data.endswith(b"0\r\n\r\n"):
            more = sock.recv(65536)
            if not more:
                break
            data = data[-8:] + more
        elapsed = time.perf_counter() - started
    return n / elapsed


def cancel_latencies(port: int, cancel_log: Path, count: int) -> list[float]:
    """Milliseconds from closing the connection to the handler's `CancelledError`."""
    latencies = []
    for i in range(count):
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(request("/sleep"))
            time.sleep(0.02)  # the handler is running by now (it waits an hour)
            closed = time.time()
            sock.close()
        deadline = time.monotonic() + 5
        while len(lines := cancel_log.read_text().split()) <= i:
            if time.monotonic() > deadline:
                raise RuntimeError("the handler never saw CancelledError")
            time.sleep(0.001)
        latencies.append((float(lines[i]) - closed) * 1000)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=5, help="streams per round")
    parser.add_argument("--disconnects", type=int, default=100, help="per app and round")
    parser.add_argument("--apps", default=",".join(FACTORIES), help="comma-separated")
    options = parser.parse_args()
    apps = options.apps.split(",")
    rates: dict[str, list[float]] = {app: [] for app in apps}
    latencies: dict[str, list[float]] = {app: [] for app in apps}
    for _ in range(options.rounds):
        for app in apps:
            with tempfile.TemporaryDirectory() as tmp:
                cancel_log = Path(tmp) / "cancelled.log"
                cancel_log.touch()
                with server(app, cancel_log) as port:
                    chunk_rate(port, options.chunks)  # warm-up
                    rates[app] += [chunk_rate(port, options.chunks) for _ in range(options.streams)]
                    if app in CANCELS:
                        latencies[app] += cancel_latencies(port, cancel_log, options.disconnects)
    print(f"{'app':<22}{'chunks/s':>12}{'cancel p50 ms':>16}{'cancel p99 ms':>16}")
    for app in apps:
        cancel = (
            f"{percentile(latencies[app], 0.5):>16.2f}{percentile(latencies[app], 0.99):>16.2f}"
            if latencies[app]
            else f"{'(no cancel)':>16}{'':>16}"
        )
        print(f"{app:<22}{statistics.median(rates[app]):>12.0f}{cancel}")
    for app in apps:
        if app in CANCELS:
            print(verdict(app, rates, latencies))


def verdict(app: str, rates: dict[str, list[float]], latencies: dict[str, list[float]]) -> str:
    """In-process: chunk rate against bare Starlette; subprocess: chunks per second."""
    rate = statistics.median(rates[app])
    p99 = percentile(latencies[app], 0.99)
    if app == "asgiserve-subprocess":
        met = rate >= TARGET_SUBPROCESS_CHUNKS_S
        measure = f"{rate:.0f} chunks/s (target >= {TARGET_SUBPROCESS_CHUNKS_S})"
    elif "starlette" in rates:
        ratio = rate / statistics.median(rates["starlette"])
        met = ratio >= TARGET_CHUNK_RATIO
        measure = f"chunk rate {ratio:.3f} of starlette (target >= {TARGET_CHUNK_RATIO})"
    else:
        met, measure = True, f"{rate:.0f} chunks/s (no starlette in the run to compare)"
    met = met and p99 < TARGET_CANCEL_P99_MS
    return (
        f"{app}: {measure}; disconnect-to-cancel p99 {p99:.2f} ms "
        f"(target < {TARGET_CANCEL_P99_MS}): {'meets' if met else 'MISSES'} targets"
    )


if __name__ == "__main__":
    main()
