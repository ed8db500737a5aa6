"""Bare Starlette doing what `fault_app.py`'s deployments do: the reference figures.

`fault_bench.py` runs the uploads and overload scenarios against this app too, in the same
run, so the figures read as a ratio: what the machine and uvicorn cost without asgiserve.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("success")


async def capacity(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.02)
    return PlainTextResponse("ok")


async def uploads(request: Request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("hold", "0")))
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"size": size})


app = Starlette(
    routes=[
        Route("/-/healthz", healthz),
        Route("/capacity", capacity),
        Route("/uploads", uploads, methods=["POST"]),
    ]
)
