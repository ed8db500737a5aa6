"""Every example in `examples/` runs: served by a real uvicorn and Hypercorn server, its
`client(base_url)` (the seed's client code) passes against it.

Each example module deploys at import time, so it is imported afresh by path for every
test (under a private name, not added to `sys.modules`); the `backend` fixture shuts
asgiserve down after each test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

import asgiserve
from tests.servers import SERVERS, free_port, serve, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
NOT_CLIENT_EXAMPLES = {"quickstart", "run_client"}  # checked below / a helper, not an example
EXAMPLES = sorted(
    path.stem for path in EXAMPLES_DIR.glob("*.py") if path.stem not in NOT_CLIENT_EXAMPLES
)


def example_params() -> list[object]:
    return list(EXAMPLES)


def load_example(name: str) -> ModuleType:
    """Import `examples/<name>.py` afresh; this runs its `asgiserve.run(...)` calls."""
    path = EXAMPLES_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"asgiserve_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_are_found() -> None:
    assert {"counter", "fastapi_hello", "handle_methods", "variable_routes"} <= set(EXAMPLES)


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("name", example_params())
def test_example(name: str, kind: str, backend: str) -> None:
    module = load_example(name)
    assert module.__doc__ and "seed" in module.__doc__, "say which seed it ports"
    assert callable(module.client)
    with serve(module.app, kind) as server:
        module.client(server.url)


def quickstart_checks() -> list[tuple[str, str]]:
    """The README's "Then `curl URL` answers `BODY`" checks for the quickstart example."""
    readme = (ROOT / "README.md").read_text()
    checks = re.findall(r"`curl '?http://127\.0\.0\.1:8000(/[^`']*)'?` answers `([^`]+)`", readme)
    assert len(checks) >= 2, "the README's quickstart curl checks were not found"
    return checks


@pytest.mark.parametrize("kind", SERVERS)
def test_quickstart_curl_checks(kind: str, backend: str) -> None:
    module = load_example("quickstart")
    doc = module.__doc__ or ""
    checks = quickstart_checks()
    for path, _ in checks:
        assert path in doc, f"quickstart.py's docstring should show curl {path}"
    with serve(module.app, kind) as server, server.client() as client:
        for path, body in checks:
            response = client.get(path)
            assert response.status_code == 200
            assert response.text == body, path
        assert client.get("/model").json() == {"scale": 2.0, "result": 2.0}
    assert asgiserve.status()["applications"]["model"]["route_prefix"] == "/model"


def wait_or_fail(process: subprocess.Popen[str], port: int) -> None:
    try:
        wait_for_port(port, process)
    except (RuntimeError, TimeoutError):
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"the server did not start:\n{out}")


def test_documented_uvicorn_command(backend: str) -> None:
    """`uvicorn --app-dir examples counter:app`, as the docstrings say, in a subprocess."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            "examples",
            "counter:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_or_fail(process, port)
        load_example("counter").client(f"http://127.0.0.1:{port}")  # the client only
        response = httpx.get(f"http://127.0.0.1:{port}/?a=b&c=d")
        assert response.json() == {"a": "b", "c": "d"}
    finally:
        process.terminate()
        process.communicate(timeout=15)


def test_run_as_a_script(backend: str) -> None:
    """`python examples/handle_methods.py PORT` serves the app and runs `client` in-process."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / "handle_methods.py"), str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "client OK" in result.stdout


def test_sync_and_async_handle_callers_at_the_limit(backend: str) -> None:
    """web_server_integration's pattern: `async def` routes await a handle on the server's
    loop while `def` routes block on `.result()`; at `max_ongoing_requests` one queues."""
    import asyncio
    import threading
    import time

    from fastapi import FastAPI

    from asgiserve.loops import background_loop

    @asgiserve.deployment(max_ongoing_requests=1)
    class Slow:
        def __call__(self, request: object) -> None:  # see KNOWN_BUGS: needed for now
            return None

        async def work(self, tag: str) -> str:
            await asyncio.sleep(0.2)
            return tag

    handle = asgiserve.run(Slow.bind(), name="slow", route_prefix=None)
    app = FastAPI()

    @app.get("/async")
    async def via_server_loop() -> str:
        return str(await handle.work.remote("http"))

    app.mount("/", asgiserve.router)
    background_loop()  # started before the round, so only the hand-over can wake it
    with serve(app) as server:
        for _ in range(5):
            results: dict[str, object] = {}

            def http_call(url: str, into: dict[str, object]) -> None:
                into["http"] = httpx.get(f"{url}/async", timeout=5).text

            thread = threading.Thread(target=http_call, args=(server.url, results))
            thread.start()
            time.sleep(0.1)  # the HTTP call holds the only slot; this one queues
            response = handle.work.remote("sync")
            try:
                results["sync"] = response.result(timeout_s=2)
            finally:
                response.cancel()  # a call stuck in the queue must not outlive the test
                thread.join()
            assert results == {"http": '"http"', "sync": "sync"}
