"""Fixtures: every HTTP test runs on each server and on each backend under test.

`ASGISERVE_TEST_BACKENDS=inprocess,subprocess` picks the backends (default: every one
this checkout has, Ray when it is installed), so new backends run the same suite unchanged.
Ray tests share one local Ray for the session.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import asgiserve
from tests.servers import SERVERS, LiveServer, serve

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the tests talk to nobody else
DEFAULT_BACKENDS = "inprocess,subprocess" + (",ray" if importlib.util.find_spec("ray") else "")
BACKENDS = os.environ.get("ASGISERVE_TEST_BACKENDS", DEFAULT_BACKENDS).split(",")


# Where a leaked socket, transport or file fails the test: the subprocess backend's own
# tests and every test of the shared suite on that backend.
STRICT_FILES = ("test_subprocess.py", "test_shipping.py")
STRICT_WARNINGS = ("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        on_subprocess = params is not None and params.params.get("backend") == "subprocess"
        if on_subprocess or item.path.name in STRICT_FILES:
            for rule in STRICT_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked `pytest.mark.anyio`) run on asyncio."""
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The backend every `asgiserve.run()` in the test uses; everything is shut down after."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    monkeypatch.setenv("ASGISERVE_BACKEND", request.param)
    yield request.param
    asgiserve.shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray for every test that needs it; asgiserve uses it instead of its own."""
    import ray

    ray.init(num_cpus=4, resources={"model_slot": 2}, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", params=SERVERS)
def live(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """A real server whose FastAPI app mounts `asgiserve.router` at `/`."""
    app = FastAPI(lifespan=asgiserve.router.lifespan)
    app.mount("/", asgiserve.router)
    with serve(app, request.param) as server:
        yield server


@pytest.fixture
def http(live: LiveServer, backend: str) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client
