"""Streaming chunk rate and disconnect-to-cancel latency, asgiserve against bare Starlette.

Each app runs in its own uvicorn subprocess on a loopback port (same settings as
`http_bench.py`); `ray-serve` (chunk rate only) runs Ray Serve's own server from the
competitors venv (benchmarks/competitors/setup.sh), as in `http_bench.py`. Two figures per
app, medians over `--rounds`:

- chunk rate: a raw socket client reads `/stream?n=N` (N small chunks from an async
  generator) to the end; chunks per second from the first byte to the last;
- cancel latency: a client sends `GET /sleep`, waits until the handler is running, closes
  the connection and notes the time; the handler notes when it sees `CancelledError`.
  The difference, over `--disconnects` requests, gives p50 and p99. asgiserve only: bare
  Starlette does not cancel an endpoint when its client leaves.

    python benchmarks/stream_bench.py --rounds 3
    python benchmarks/stream_bench.py --apps starlette,asgiserve-subprocess,ray-serve
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
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_bench import (  # noqa: E402
    COMPETITORS_DIR,
    HOST,
    STOP_TIMEOUT,
    Competitor,
    competitors_python,
    free_port,
    in_session,
    uvicorn_settings,
    without_missing,
)
from stream_apps import CHUNK, FACTORIES  # noqa: E402

# Bare Starlette does not cancel an endpoint when its client leaves: nothing to time there.
CANCELS = ("asgiserve", "asgiserve-subprocess", "asgiserve-ray")
TARGET_CHUNK_RATIO = 0.8  # in-process, against bare Starlette
TARGET_SUBPROCESS_CHUNKS_S = 20_000  # the subprocess backend, absolute
TARGET_CANCEL_P99_MS = 20.0
# Other frameworks, run from the competitors venv (never imported here); chunk rate only.
# Keys match http_bench.COMPETITORS, whose `competitor_missing` checks the venv.
STREAM_COMPETITORS = {"ray-serve": Competitor("Ray Serve", "ray_serve_stream_app.py", "ray")}
RAY_PAIR = ("asgiserve-subprocess", "ray-serve")  # compared when both are in the run
STARTUP_TIMEOUT = 30.0  # seconds for a uvicorn app; a competitor gets its own (Ray: 120)
READ_TIMEOUT = 60.0  # seconds a client waits for the next bytes before it gives up


def server_command(app: str, port: int) -> list[str]:
    """uvicorn for our apps; a competitor's own server, from its venv, for the others."""
    competitor = STREAM_COMPETITORS.get(app)
    if competitor is not None:
        script = COMPETITORS_DIR / competitor.script
        return [str(competitors_python()), str(script), "--port", str(port)]
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory",
        f"stream_apps:{FACTORIES[app]}", "--host", HOST, "--port", str(port),
        *uvicorn_settings(),
    ]  # fmt: skip


def streams(port: int) -> bool:
    """Whether `/stream` answers with its chunk: Ray's proxy listens before the app is up."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/stream?n=1", timeout=2) as response:
            return response.status == 200 and bool(response.read() == CHUNK)
    except OSError:
        return False


def wait_until_streaming(app: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """Ray needs a cluster and a replica first: a competitor gets its own, longer timeout."""
    competitor = STREAM_COMPETITORS.get(app)
    deadline = time.monotonic() + (competitor.startup_timeout if competitor else STARTUP_TIMEOUT)
    while not streams(port):
        if process.poll() is not None:
            raise RuntimeError(f"{app} server exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{app} server did not stream on port {port} in time")
        time.sleep(0.05)


@contextlib.contextmanager
def server(app: str, cancel_log: Path) -> Iterator[int]:
    """Run `app` in a session of its own, so all it starts (Ray's cluster, the subprocess
    backend's worker) is stopped with it; yields its port once it streams. Its output is
    shown only if it fails (Ray logs every request)."""
    port = free_port()
    env = {**os.environ, "ASGISERVE_BENCH_CANCEL_LOG": str(cancel_log)}
    competitor = STREAM_COMPETITORS.get(app)
    grace = competitor.stop_timeout if competitor else STOP_TIMEOUT

    def ready(process: subprocess.Popen[bytes]) -> None:
        wait_until_streaming(app, port, process)

    with in_session(server_command(app, port), app, grace, ready, env):
        yield port


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def chunk_rate(port: int, n: int) -> float:
    """Chunks per second for one streamed response of `n` chunks, read to the end."""
    with socket.create_connection((HOST, port), timeout=READ_TIMEOUT) as sock:
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


def parse_args() -> argparse.Namespace:
    known = [*FACTORIES, *STREAM_COMPETITORS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=5, help="streams per round")
    parser.add_argument("--disconnects", type=int, default=100, help="per app and round")
    parser.add_argument(
        "--apps", default=",".join(FACTORIES),
        help=f"comma-separated, in run order; any of {', '.join(known)}",
    )  # fmt: skip
    options = parser.parse_args()
    options.apps = [app.strip() for app in options.apps.split(",") if app.strip()]
    unknown = [app for app in options.apps if app not in known]
    if unknown:
        parser.error(f"unknown apps {unknown}; choose from {known}")
    return options


def measure(
    app: str,
    options: argparse.Namespace,
    rates: dict[str, list[float]],
    latencies: dict[str, list[float]],
) -> None:
    """One round of one app, on a fresh server: chunk rates, then cancel latencies."""
    with tempfile.TemporaryDirectory() as tmp:
        cancel_log = Path(tmp) / "cancelled.log"
        cancel_log.touch()
        with server(app, cancel_log) as port:
            chunk_rate(port, options.chunks)  # warm-up
            rates[app] += [chunk_rate(port, options.chunks) for _ in range(options.streams)]
            if app in CANCELS:
                latencies[app] += cancel_latencies(port, cancel_log, options.disconnects)


def cancel_cells(app: str, latencies: dict[str, list[float]]) -> str:
    """p50 and p99, or why there are none: Starlette cannot cancel, Ray is not measured."""
    if latencies[app]:
        return f"{percentile(latencies[app], 0.5):>16.2f}{percentile(latencies[app], 0.99):>16.2f}"
    note = "(not measured)" if app in STREAM_COMPETITORS else "(no cancel)"
    return f"{note:>16}{'':>16}"


def pair_line(rates: dict[str, list[float]]) -> str | None:
    """asgiserve's subprocess backend against Ray Serve, when both ran."""
    ours, theirs = RAY_PAIR
    if not (rates.get(ours) and rates.get(theirs)):
        return None
    ratio = statistics.median(rates[ours]) / statistics.median(rates[theirs])
    return f"{ours} / {theirs} chunk rate: {ratio:.2f} x"


def main() -> None:
    options = parse_args()
    apps = without_missing(options.apps, STREAM_COMPETITORS, sys.stdout)
    rates: dict[str, list[float]] = {app: [] for app in apps}
    latencies: dict[str, list[float]] = {app: [] for app in apps}
    for _ in range(options.rounds):
        for app in apps:
            measure(app, options, rates, latencies)
    print(f"{'app':<22}{'chunks/s':>12}{'cancel p50 ms':>16}{'cancel p99 ms':>16}")
    for app in apps:
        print(f"{app:<22}{statistics.median(rates[app]):>12.0f}{cancel_cells(app, latencies)}")
    if (line := pair_line(rates)) is not None:
        print(line)
    for app in apps:
        if app in CANCELS:
            print(verdict(app, rates, latencies))


def verdict(app: str, rates: dict[str, list[float]], latencies: dict[str, list[float]]) -> str:
    """In-process: chunk rate against bare Starlette; subprocess and Ray: chunks per second."""
    rate = statistics.median(rates[app])
    p99 = percentile(latencies[app], 0.99)
    if app == "asgiserve-subprocess":
        met = rate >= TARGET_SUBPROCESS_CHUNKS_S
        measure = f"{rate:.0f} chunks/s (target >= {TARGET_SUBPROCESS_CHUNKS_S})"
    elif app == "asgiserve-ray":  # reported beside the subprocess backend; no target of its own
        met, measure = True, f"{rate:.0f} chunks/s"
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
