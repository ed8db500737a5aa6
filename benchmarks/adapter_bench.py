"""json_to_ndarray against the reference approach, over HTTP on loopback, side by side.

The reference is what Serve's adapter does: a FastAPI dependency whose body parameter is
the pydantic model `NdArray` (a `Union` of nested `List[float]`), then `np.array`. Both
are `Depends(...)` of routes in one FastAPI app, served by one uvicorn subprocess; both
document the same request body in OpenAPI (checked). The client posts the same
1,000 x 1,000 float payload again and again (wrk with a Lua body, or httpx without wrk);
rounds alternate the two routes so a slow spell on the machine hits both.

Memory: the peak of tracemalloc-traced allocations while each decode function runs
in-process on the same payload (numpy's buffers included), against the payload's size.

    python benchmarks/adapter_bench.py                       # 3 rounds x 10 s
    python benchmarks/adapter_bench.py --rounds 1 --duration 5 --size 500

No `from __future__ import annotations`: FastAPI reads the reference dependency's
annotation, a class imported inside a function.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
ROUTES = {"reference": "/reference", "json_to_ndarray": "/asgiserve"}
TARGET_SPEEDUP = 3.0
TARGET_MEMORY_RATIO = 4.0


# -- the app (a uvicorn factory: `adapter_bench:make_app`) --------------------------------


def reference_adapter(payload: Any) -> Any:
    """Serve's json_to_ndarray: pydantic has validated `payload`, numpy copies it."""
    import numpy as np

    arr = np.array(payload.array)
    if payload.shape:
        arr = arr.reshape(payload.shape)
    if payload.dtype:
        arr = arr.astype(payload.dtype)
    return arr


def reference_dependency() -> Callable[..., Any]:
    from asgiserve.adapters import NdArray

    def json_to_ndarray_reference(payload: NdArray) -> Any:
        return reference_adapter(payload)

    return json_to_ndarray_reference


def make_app() -> Any:
    from fastapi import Depends, FastAPI

    from asgiserve.adapters import json_to_ndarray

    app = FastAPI()

    @app.post(ROUTES["reference"])
    async def reference(arr: Any = Depends(reference_dependency())) -> dict[str, Any]:
        return {"shape": list(arr.shape), "sum": float(arr.sum())}

    @app.post(ROUTES["json_to_ndarray"])
    async def asgiserve_route(arr: Any = Depends(json_to_ndarray)) -> dict[str, Any]:
        return {"shape": list(arr.shape), "sum": float(arr.sum())}

    return app


# -- the payload and the in-process figures ------------------------------------------------


def payload(size: int) -> bytes:
    import numpy as np

    arr = np.random.default_rng(0).random((size, size))
    return json.dumps({"array": arr.tolist()}).encode()


def decode_reference(body: bytes) -> Any:
    """What the reference route does to the body: FastAPI's json.loads, pydantic, numpy."""
    from asgiserve.adapters import NdArray

    return reference_adapter(NdArray.model_validate(json.loads(body)))


def decode_ours(body: bytes) -> Any:
    from asgiserve.adapters.ndarray import decode_ndarray

    return decode_ndarray(body)


def peak_memory(decode: Callable[[bytes], Any], body: bytes) -> int:
    """Peak bytes allocated while `decode` runs (the body itself was allocated before)."""
    decode(body)  # warm: imports and caches are not the decode's cost
    tracemalloc.start()
    try:
        result = decode(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def decode_seconds(decode: Callable[[bytes], Any], body: bytes, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        decode(body)
        best = min(best, time.perf_counter() - start)
    return best


# -- the server and the load ---------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def uvicorn_settings() -> list[str]:
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return ["--loop", loop, "--http", http, "--log-level", "warning", "--no-access-log"]


@contextmanager
def server() -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory",
        "adapter_bench:make_app", "--host", HOST, "--port", str(port), *uvicorn_settings(),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://{HOST}:{port}"
    try:
        wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer within {timeout} s")


def check_server(url: str, body: bytes) -> dict[str, Any]:
    """Both routes give the same answer and document the same request body."""
    import httpx

    headers = {"content-type": "application/json"}
    answers = [
        httpx.post(url + route, content=body, headers=headers, timeout=120).json()
        for route in ROUTES.values()
    ]
    assert answers[0] == answers[1], answers
    spec = httpx.get(f"{url}/openapi.json").json()
    bodies = [spec["paths"][route]["post"]["requestBody"] for route in ROUTES.values()]
    return {"openapi_request_body_identical": bodies[0] == bodies[1], "request_body": bodies[0]}


def load_wrk(url: str, body_file: str, connections: int, duration: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "ADAPTER_BENCH_BODY": body_file,
        "ADAPTER_BENCH_REPORT": str(HERE / "wrk_report.lua"),
    }
    command = [
        "wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "60s",
        "-s", str(HERE / "adapter_post.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    report = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(report["errors"].values())
    return {"requests_per_s": report["requests"] / (report["duration_us"] / 1e6), "errors": errors}


def load_httpx(url: str, body: bytes, connections: int, duration: float) -> dict[str, Any]:
    """Without wrk: one keep-alive connection per thread, posting the pre-encoded body."""
    import threading

    import httpx

    done: list[int] = []
    errors: list[int] = []
    deadline = time.monotonic() + duration

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < deadline:
                ok = client.post(url, content=body, headers={"content-type": "application/json"})
                (done if ok.status_code == 200 else errors).append(1)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests_per_s": len(done) / (time.monotonic() - start), "errors": len(errors)}


# -- the run -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000, help="the array is SIZE x SIZE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--client", choices=["wrk", "httpx"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    client = args.client or ("wrk" if shutil.which("wrk") else "httpx")

    body = payload(args.size)
    print(f"payload: {args.size} x {args.size} floats, {len(body) / 1e6:.1f} MB of JSON")
    figures: dict[str, Any] = {"payload_bytes": len(body), "client": client, "routes": {}}
    for name, decode in (("reference", decode_reference), ("json_to_ndarray", decode_ours)):
        peak = peak_memory(decode, body)
        seconds = decode_seconds(decode, body)
        figures["routes"][name] = {
            "decode_ms": seconds * 1000,
            "peak_decode_bytes": peak,
            "peak_decode_ratio": peak / len(body),
            "requests_per_s": [],
        }
        print(
            f"in process  {name:16} decode {seconds * 1000:7.1f} ms   "
            f"peak memory {peak / 1e6:6.1f} MB = {peak / len(body):.2f} x payload"
        )

    with tempfile.NamedTemporaryFile(suffix=".json") as body_file, server() as url:
        body_file.write(body)
        body_file.flush()
        figures.update(check_server(url, body))
        print(f"OpenAPI request body identical: {figures['openapi_request_body_identical']}")

        def load(route: str, duration: float) -> dict[str, Any]:
            if client == "wrk":
                return load_wrk(url + route, body_file.name, args.connections, duration)
            return load_httpx(url + route, body, args.connections, duration)

        for number in range(1, args.rounds + 1):
            for name, route in ROUTES.items():
                load(route, args.warmup)
                result = load(route, args.duration)
                figures["routes"][name]["requests_per_s"].append(result["requests_per_s"])
                print(
                    f"round {number}  {name:16} {result['requests_per_s']:7.2f} req/s"
                    f"   errors {result['errors']}"
                )

    rates = {name: statistics.median(r["requests_per_s"]) for name, r in figures["routes"].items()}
    speedup = rates["json_to_ndarray"] / rates["reference"]
    ratio = figures["routes"]["json_to_ndarray"]["peak_decode_ratio"]
    figures.update(median_requests_per_s=rates, speedup=speedup)
    print(
        f"\nover HTTP ({client}, {args.connections} connection(s), median of {args.rounds}): "
        f"reference {rates['reference']:.2f} req/s, json_to_ndarray "
        f"{rates['json_to_ndarray']:.2f} req/s: {speedup:.2f} x (target >= {TARGET_SPEEDUP})"
    )
    print(
        f"json_to_ndarray peak decode memory: {ratio:.2f} x the payload "
        f"(target <= {TARGET_MEMORY_RATIO}); reference: "
        f"{figures['routes']['reference']['peak_decode_ratio']:.2f} x"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    met = (
        speedup >= TARGET_SPEEDUP
        and ratio <= TARGET_MEMORY_RATIO
        and figures["openapi_request_body_identical"]
    )
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
