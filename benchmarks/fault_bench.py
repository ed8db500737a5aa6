"""Faults under load: kill and stop replicas, flood the server, upload to it, walk away.

Serves `fault_app.py` with uvicorn in its own process (so its memory can be read), on the
backend named by `--backend`, and reports the figures of issue 15:

- kill: SIGKILL (on Ray, `ray.kill`) one of two replicas under 64-connection load:
  requests that failed against that replica's in-flight count, requests that hung, and
  how long until throughput is back to what one replica less still serves;
- stop: SIGSTOP one of two replicas under load: how long until it is replaced, and how
  long `shutdown()` takes while a replica is stopped;
- uploads: 100 concurrent 40 MiB uploads to a deployment busy with other work: how much
  the server's memory grows;
- overload: 1,280 connections against a deployment that serves 64 at a time (wrk): the
  slowest answer, the status codes, memory, and a request after the load;
- disconnects: 1,000 clients that leave mid-body and mid-stream: tasks and slots after.

    python benchmarks/fault_bench.py --backend subprocess
    python benchmarks/fault_bench.py --backend ray --only kill,stop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
HEALTH_TIMEOUT_S = 2.0  # fault_app's health_check_timeout_s
GRACEFUL_S = 2.0  # fault_app's graceful_shutdown_timeout_s
SCENARIOS = ("kill", "stop", "uploads", "overload", "disconnects")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(
    backend: str, app: str = "fault_app:app"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "FAULT_BACKEND": backend, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), app,
         "--port", str(port), "--log-level", "error", "--backlog", "4096"],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/-/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("the fault server did not start")
        time.sleep(0.2)
    try:
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def deployment(url: str, app: str, name: str) -> dict[str, Any]:
    status = httpx.get(f"{url}/bench/status", timeout=10).json()
    return status["applications"][app]["deployments"][name]  # type: ignore[no-any-return]


# -- kill and stop under load ----------------------------------------------------------------


async def load(url: str, seconds: float, outcomes: list[tuple[float, float, str]]) -> None:
    """64 keep-alive connections asking for /work as fast as answers come, each timed.

    Plain asyncio streams: a Python HTTP client library would be the bottleneck here.
    """
    port = int(url.rsplit(":", 1)[1])
    request = b"GET /work HTTP/1.1\r\nhost: bench\r\n\r\n"
    stop_at = time.monotonic() + seconds

    async def one_connection() -> None:
        reader = writer = None
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                what = head.split(b" ", 2)[1].decode()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError) as exc:
                what = type(exc).__name__
                if writer is not None:
                    writer.close()
                reader = writer = None
            outcomes.append((started, time.monotonic(), what))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(64)))


def rate(outcomes: list[tuple[float, float, str]], start: float, end: float) -> float:
    done = [o for o in outcomes if start <= o[1] < end and o[2] == "200"]
    return len(done) / (end - start)


def kill_figures(url: str, backend: str) -> dict[str, Any]:
    pids = httpx.get(f"{url}/bench/pids", timeout=30).json()
    (pid, replica_id) = pids[0]
    outcomes: list[tuple[float, float, str]] = []
    killed: dict[str, Any] = {}

    async def scenario() -> None:
        loader = asyncio.ensure_future(load(url, 8.0, outcomes))
        await asyncio.sleep(3.0)
        async with httpx.AsyncClient(base_url=url, timeout=30) as control:
            killed["at"] = time.monotonic()
            params = {"pid": pid, "replica_id": replica_id}
            killed.update((await control.post("/bench/kill", params=params)).json())
        await loader

    asyncio.run(scenario())
    at = killed["at"]
    failed = [o for o in outcomes if o[2] != "200"]
    hung = [o for o in outcomes if o[1] - o[0] > 5]
    before = rate(outcomes, at - 2, at)
    # One replica less serves half: "full capacity" is both replicas again, the rate before.
    back = None
    for tenth in range(1, 50):
        start = at + tenth * 0.1
        if start + 0.5 > outcomes[-1][1]:
            break
        if rate(outcomes, start, start + 0.5) >= 0.9 * before:
            back = round(start - at, 1)
            break
    return {
        "how": killed["how"],
        "in_flight_on_killed (before, after)": killed["in_flight"],
        "failed": len(failed),
        "failed_kinds": sorted({o[2] for o in failed}),
        "hung_over_5s": len(hung),
        "requests": len(outcomes),
        "rate_before": round(before),
        "capacity_back_after_s": back,
    }


def stop_figures(url: str) -> dict[str, Any]:
    pids = httpx.get(f"{url}/bench/pids", timeout=30).json()
    (pid, replica_id) = pids[0]
    outcomes: list[tuple[float, float, str]] = []
    figures: dict[str, Any] = {}

    async def scenario() -> None:
        loader = asyncio.ensure_future(load(url, 8.0, outcomes))
        await asyncio.sleep(2.0)
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        async with httpx.AsyncClient(base_url=url, timeout=30) as control:
            while time.monotonic() - stopped_at < 20:
                status = (await control.get("/bench/status")).json()
                work = status["applications"]["work"]["deployments"]["Work"]
                ids = [replica["replica_id"] for replica in work["replicas"]]
                if replica_id not in ids and len(ids) == 2:
                    figures["replaced_after_s"] = round(time.monotonic() - stopped_at, 2)
                    break
                await asyncio.sleep(0.05)
        await loader

    try:
        asyncio.run(scenario())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    stuck = [o for o in outcomes if o[1] - o[0] > HEALTH_TIMEOUT_S + 2]
    figures["requests"] = len(outcomes)
    figures["failed"] = sum(o[2] != "200" for o in outcomes)
    figures["longest_s"] = round(max(o[1] - o[0] for o in outcomes), 2)
    figures["over_timeout_plus_2s"] = len(stuck)
    figures["target_replaced_s"] = HEALTH_TIMEOUT_S + 1
    # shutdown while one replica is stopped
    (pid, _) = httpx.get(f"{url}/bench/pids", timeout=30).json()[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        took = httpx.post(f"{url}/bench/shutdown", timeout=60).json()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    figures["shutdown_while_stopped_s"] = round(took, 2)
    figures["target_shutdown_s"] = GRACEFUL_S + 2
    return figures


# -- uploads, overload, disconnects ----------------------------------------------------------


def uploads_figures(url: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    size = 40 * 1024 * 1024
    body = b"u" * size
    head = (f"POST /uploads?hold=8 HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n"
            "connection: close\r\n\r\n").encode()  # fmt: skip
    before = rss_mb(process.pid)
    peak = before
    socks = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sock.sendall(head)
        socks.append([sock, memoryview(body)])
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # push whatever the server will take
        for entry in socks:
            sock, rest = entry
            if rest:
                with contextlib.suppress(BlockingIOError):
                    entry[1] = rest[sock.send(rest[: 1 << 20]):]
        peak = max(peak, rss_mb(process.pid))
        time.sleep(0.01)
    sent = sum(size - len(rest) for _, rest in socks)
    for sock, _ in socks:
        sock.close()
    return {"uploads": 100, "upload_mib": 40, "rss_before_mb": round(before),
            "rss_growth_mb": round(peak - before, 1), "target_growth_mb": 50,
            "taken_by_server_mb": round(sent / 2**20)}  # fmt: skip


def overload_figures(url: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    before = rss_mb(process.pid)
    script = HERE / "wrk_report.lua"
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c1280", "-d10s", "--timeout", "5s", "--latency", "-s", str(script),
         f"{url}/capacity"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = before
    while wrk.poll() is None:
        peak = max(peak, rss_mb(process.pid))
        time.sleep(0.1)
    output = wrk.stdout.read() if wrk.stdout else ""
    report: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            report = json.loads(line[len("WRK_JSON "):])
    after = httpx.get(f"{url}/capacity", timeout=10)
    latency = report.get("latency_us", {})
    return {
        "connections": 1280,
        "requests": report.get("requests"),
        **{f"{p}_ms": round(latency.get(p, 0) / 1000) for p in ("p50", "p90", "p99", "max")},
        "errors (status = non-2xx, the 503s)": report.get("errors"),
        "rss_before_mb": round(before),
        "rss_peak_mb": round(peak),
        "after_the_load": after.status_code,
    }


async def leave_mid_body(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /uploads HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n"
    writer.write(head + b"x" * 500)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()


async def leave_mid_stream(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /streams HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    await reader.read(3000)  # the head and a few chunks
    writer.close()


def disconnect_figures(url: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    tasks_before = httpx.get(f"{url}/bench/tasks", timeout=10).json()
    rss_before = rss_mb(process.pid)

    async def many() -> None:
        for _ in range(10):
            await asyncio.gather(*(leave_mid_body(port) for _ in range(50)),
                                 *(leave_mid_stream(port) for _ in range(50)))  # fmt: skip

    asyncio.run(many())
    time.sleep(2)
    in_flight = {
        name: sum(r["in_flight"] for r in deployment(url, name, d)["replicas"])
        for name, d in (("uploads", "Uploads"), ("streams", "Streams"))
    }
    return {
        "disconnects": 1000,
        "tasks_before": tasks_before,
        "tasks_after": httpx.get(f"{url}/bench/tasks", timeout=10).json(),
        "slots_in_use_after": in_flight,
        "queued_after": deployment(url, "uploads", "Uploads")["queued"],
        "rss_growth_mb": round(rss_mb(process.pid) - rss_before, 1),
    }


BARE = {"uploads": uploads_figures, "overload": overload_figures}
BARE_KEY = {"uploads": "rss_growth_mb", "overload": "p99_ms"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="subprocess")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    chosen = args.only.split(",")
    results: dict[str, Any] = {"backend": args.backend}
    for name in SCENARIOS:
        if name not in chosen:
            continue
        with server(args.backend) as (url, process):  # a fresh server per scenario
            if name == "kill":
                results[name] = kill_figures(url, args.backend)
            elif name == "stop":
                results[name] = stop_figures(url)
            elif name == "uploads":
                results[name] = uploads_figures(url, process)
            elif name == "overload":
                results[name] = overload_figures(url, process)
            else:
                results[name] = disconnect_figures(url, process)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        if name in BARE:  # the same load on bare Starlette, for the ratio
            with server(args.backend, "fault_bare:app") as (url, process):
                bare = BARE[name](url, process)
            print(f"{name} on bare Starlette: {json.dumps(bare)}", flush=True)
            key = BARE_KEY[name]
            if bare[key]:
                print(f"{name} ratio ({key}): {results[name][key] / bare[key]:.2f}", flush=True)


if __name__ == "__main__":
    main()
