"""The apps under load, as uvicorn factories: `uvicorn --factory apps:bare_starlette`.

Each factory builds its app only when the server calls it, so the bare Starlette server
never imports asgiserve and each asgiserve server deploys its application exactly once.
Every app answers `GET /` with `{"hello": "world"}`.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

HELLO = {"hello": "world"}


async def noop(request: Request) -> JSONResponse:
    return JSONResponse(HELLO)


def bare_starlette() -> Starlette:
    """The baseline: one Starlette route, no asgiserve."""
    return Starlette(routes=[Route("/", noop)])


def starlette_mounted() -> Starlette:
    """The same route one `Mount("/")` down, as the `asgiserve` apps are: what Starlette's
    own mount costs, for reading their ratio (no asgiserve)."""
    return Starlette(routes=[Mount("/", routes=[Route("/", noop)])])


def bare_fastapi() -> FastAPI:
    """The FastAPI baseline: one FastAPI route, no asgiserve."""
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return HELLO

    return app


class Noop:
    """The deployment under test: does nothing but answer."""

    async def __call__(self, request: Request) -> dict[str, str]:
        return HELLO


def deploy_noop(backend: str = "inprocess", **options: Any) -> None:
    """Deploy `Noop` at `/` on the default router, the way users do."""
    import asgiserve

    deployment = asgiserve.deployment(Noop).options(**options)
    asgiserve.run(deployment.bind(), route_prefix="/", backend=backend)


def asgiserve_inprocess() -> Starlette:
    """asgiserve with the in-process backend and default options, mounted in Starlette."""
    import asgiserve

    deploy_noop()
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_inprocess_no_metrics() -> Starlette:
    """As `asgiserve_inprocess` with metrics off (`ASGISERVE_METRICS=0`): what they cost."""
    os.environ["ASGISERVE_METRICS"] = "0"  # read when the router and replicas are made
    return asgiserve_inprocess()


def asgiserve_inprocess_wide() -> Starlette:
    """As `asgiserve_inprocess`, with `max_ongoing_requests` above any connection count,
    so no request waits in the scheduler's queue: isolates the queueing cost."""
    import asgiserve

    deploy_noop(max_ongoing_requests=1024)
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_router() -> Any:
    """asgiserve's router as the server's app, as `uvicorn` would serve it top-level (and as
    the `asgiserve run` command will): the cost of asgiserve alone, without the Starlette
    app and `Mount` that users may put in front of it."""
    import asgiserve

    deploy_noop()
    return asgiserve.router


def fastapi_asgiserve_inprocess() -> FastAPI:
    """asgiserve with the in-process backend, mounted in a FastAPI outer app."""
    import asgiserve

    deploy_noop()
    app = FastAPI()
    app.mount("/", asgiserve.router)
    return app


def asgiserve_subprocess() -> Starlette:
    """asgiserve with one worker process (the subprocess backend), default options."""
    import asgiserve

    deploy_noop(backend="subprocess")
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_subprocess_wide() -> Starlette:
    """As `asgiserve_subprocess`, with `max_ongoing_requests=100`: every connection's
    request in the worker at once, instead of 5 and a queue in the server."""
    import asgiserve

    deploy_noop(backend="subprocess", max_ongoing_requests=100)
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_ray() -> Starlette:
    """asgiserve with one Ray actor (the ray backend, a local Ray started on first use),
    default options: the server calls the actor directly, no proxy actor in between."""
    import asgiserve

    deploy_noop(backend="ray")
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_ray_wide() -> Starlette:
    """As `asgiserve_ray`, with `max_ongoing_requests=100`."""
    import asgiserve

    deploy_noop(backend="ray", max_ongoing_requests=100)
    return Starlette(routes=[Mount("/", asgiserve.router)])


# name on the command line -> factory in this module
FACTORIES = {
    "starlette": "bare_starlette",
    "starlette-mounted": "starlette_mounted",
    "fastapi": "bare_fastapi",
    "asgiserve": "asgiserve_inprocess",
    "asgiserve-no-metrics": "asgiserve_inprocess_no_metrics",
    "asgiserve-wide": "asgiserve_inprocess_wide",
    "asgiserve-router": "asgiserve_router",
    "fastapi-asgiserve": "fastapi_asgiserve_inprocess",
    "asgiserve-subprocess": "asgiserve_subprocess",
    "asgiserve-subprocess-wide": "asgiserve_subprocess_wide",
    "asgiserve-ray": "asgiserve_ray",
    "asgiserve-ray-wide": "asgiserve_ray_wide",
}
