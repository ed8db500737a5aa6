"""Apps for `stream_bench.py`, as uvicorn factories.

`/stream?n=N` streams N small chunks from an async generator; `/sleep` waits until the
client leaves and appends the time its handler saw `CancelledError` to the file named by
`ASGISERVE_BENCH_CANCEL_LOG` (one line per cancelled request).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

CHUNK = b"0123456789abcdef"


async def chunks(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield CHUNK


def stream_response(request: Request) -> StreamingResponse:
    return StreamingResponse(chunks(int(request.query_params.get("n", "10000"))))


async def sleep_until_cancelled() -> Response:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        with open(os.environ["ASGISERVE_BENCH_CANCEL_LOG"], "a") as log:
            log.write(f"{time.time()}\n")
        raise
    return PlainTextResponse("never")


async def stream_endpoint(request: Request) -> Response:
    return stream_response(request)


async def sleep_endpoint(request: Request) -> Response:
    return await sleep_until_cancelled()


def bare_starlette() -> Starlette:
    return Starlette(routes=[Route("/stream", stream_endpoint), Route("/sleep", sleep_endpoint)])


class Streamer:
    async def __call__(self, request: Request) -> Response:
        if request.url.path.endswith("/sleep"):
            return await sleep_until_cancelled()
        return stream_response(request)


def asgiserve_inprocess() -> Starlette:
    import asgiserve

    asgiserve.run(asgiserve.deployment(Streamer).bind(), route_prefix="/")
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_subprocess() -> Starlette:
    import asgiserve

    asgiserve.run(asgiserve.deployment(Streamer).bind(), route_prefix="/", backend="subprocess")
    return Starlette(routes=[Mount("/", asgiserve.router)])


def asgiserve_ray() -> Starlette:
    import asgiserve

    asgiserve.run(asgiserve.deployment(Streamer).bind(), route_prefix="/", backend="ray")
    return Starlette(routes=[Mount("/", asgiserve.router)])


FACTORIES = {
    "starlette": "bare_starlette",
    "asgiserve": "asgiserve_inprocess",
    "asgiserve-subprocess": "asgiserve_subprocess",
    "asgiserve-ray": "asgiserve_ray",
}
