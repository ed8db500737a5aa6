"""A module whose top level deploys and asks for handles, as `main.py` files do.

Imported in a worker, that top level must deploy nothing: `run()` and the handle getters
return handles to the server's applications.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

import asgiserve


@asgiserve.deployment
class Echo:
    def echo(self, x: str) -> str:
        return x


@asgiserve.deployment
class Front:
    def __init__(self, echo: object) -> None:
        self.echo = echo

    async def __call__(self) -> dict:
        return {
            "echo": await self.echo.echo.remote("via bound handle"),
            "module_handle": await handle.options(method_name="pid").remote(),
            "app_handle": await app_handle.pid.remote(),
            "status": asgiserve.status(),
            "pid": os.getpid(),
        }

    def pid(self) -> int:
        return os.getpid()


handle = asgiserve.run(Front.bind(Echo.bind()), name="toplevel", route_prefix="/toplevel")
app_handle = asgiserve.get_app_handle("toplevel")
echo_handle = asgiserve.get_deployment_handle("Echo", "toplevel")
app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)
