"""Replicas start on first use and on lifespan startup, and stop on lifespan shutdown,
`shutdown()` and interpreter exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

import asgiserve
from tests.servers import serve


def ingress_with_events(log: Path) -> asgiserve.Deployment:
    """A deployment whose ingress app writes its startup and shutdown to `log`."""
    path = str(log)

    @asynccontextmanager
    async def events(app: FastAPI) -> AsyncIterator[None]:
        with open(path, "a") as file:
            file.write("startup\n")
        yield
        with open(path, "a") as file:
            file.write("shutdown\n")

    api = FastAPI(lifespan=events)

    @api.get("/")
    def root() -> str:
        return "up"

    @asgiserve.deployment
    @asgiserve.ingress(api)
    class Service:
        pass

    return Service


def lines(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_replicas_start_on_lifespan_startup_and_stop_on_shutdown(
    backend: str, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    asgiserve.run(ingress_with_events(log).bind(), route_prefix="/svc")
    assert lines(log) == []  # nothing runs before the server starts
    app = FastAPI(lifespan=asgiserve.router.lifespan)
    app.mount("/", asgiserve.router)
    with serve(app, lifespan="on"):
        assert lines(log) == ["startup"]  # started by the lifespan, before any request
    assert lines(log) == ["startup", "shutdown"]


def test_replicas_start_on_first_use_without_lifespan(backend: str, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    asgiserve.run(ingress_with_events(log).bind(), route_prefix="/svc")
    app = FastAPI()  # Starlette passes no lifespan events to mounted apps
    app.mount("/", asgiserve.router)
    with serve(app, lifespan="off") as server, server.client() as client:
        assert lines(log) == []
        assert client.get("/svc").json() == "up"
        assert lines(log) == ["startup"]
        asgiserve.shutdown()
        assert lines(log) == ["startup", "shutdown"]


def test_router_lifespan_composes_with_the_users_own(backend: str, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    asgiserve.run(ingress_with_events(log).bind(), route_prefix="/svc")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        async with asgiserve.router.lifespan(app):
            with open(log, "a") as file:
                file.write("user-startup\n")
            yield {"db": "connected"}
            with open(log, "a") as file:
                file.write("user-shutdown\n")

    app = FastAPI(lifespan=lifespan)
    app.mount("/", asgiserve.router)

    @app.get("/db")
    def db(request: object) -> str:
        return "ok"

    with serve(app, lifespan="on") as server, server.client() as client:
        assert client.get("/svc").json() == "up"
    assert lines(log) == ["startup", "user-startup", "user-shutdown", "shutdown"]


def test_replicas_restart_on_use_after_a_lifespan_shutdown(backend: str, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    asgiserve.run(ingress_with_events(log).bind(), route_prefix="/svc")
    app = FastAPI(lifespan=asgiserve.router.lifespan)
    app.mount("/", asgiserve.router)
    with serve(app, lifespan="on"):
        pass
    with serve(app, lifespan="off") as server, server.client() as client:
        assert client.get("/svc").json() == "up"
    # The second server's loop ended without lifespan events: the replica still shuts down
    # (in-process at once, with the loop it lived on; a worker process at `shutdown()`).
    asgiserve.shutdown()
    assert lines(log) == ["startup", "shutdown", "startup", "shutdown"]


def test_interpreter_exit_stops_replicas(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asgiserve
            from tests.test_lifespan import ingress_with_events
            from pathlib import Path

            handle = asgiserve.run(ingress_with_events(Path({str(log)!r})).bind())
            print(asgiserve.status()["applications"]["default"]["ingress"])
            handle.remote  # used from a plain script; the exit hook must stop the replica
            import httpx
            from fastapi import FastAPI
            app = FastAPI()
            app.mount("/", asgiserve.router)

            async def main():
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    print((await c.get("/")).json())

            import asyncio
            asyncio.run(main())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Service", "up"]
    assert lines(log) == ["startup", "shutdown"]
