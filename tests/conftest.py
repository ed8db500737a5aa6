"""Fixtures: every HTTP test runs on each server and on each backend under test.

`ASGISERVE_TEST_BACKENDS=inprocess,subprocess` picks the backends (default: every one
this checkout has), so new backends run the same suite unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

import asgiserve
from tests.servers import SERVERS, LiveServer, serve

BACKENDS = os.environ.get("ASGISERVE_TEST_BACKENDS", "inprocess,subprocess").split(",")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked `pytest.mark.anyio`) run on asyncio."""
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The backend every `asgiserve.run()` in the test uses; everything is shut down after."""
    monkeypatch.setenv("ASGISERVE_BACKEND", request.param)
    yield request.param
    asgiserve.shutdown()


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
