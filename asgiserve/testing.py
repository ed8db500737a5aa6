"""Test clients for your own test suites.

`TestClient(target)` is a Starlette `TestClient` over a router of its own that serves
`target` at `/`: a bound application, a deployment (bound with no arguments) or a plain
ASGI app such as your FastAPI app, served as the ingress of a deployment. Its replicas
run on the chosen backend (by default the router's choice: `ASGISERVE_BACKEND`, else
in-process) and stop when the client closes. As Starlette's does, it re-raises an error
of the application into the test (HTTP and WebSocket routes alike), after the 500 went
out, unless `raise_server_exceptions=False`.

`AsyncTestClient` is the same for async tests: an `httpx.AsyncClient` over the router
with `httpx.ASGITransport`; `async with` starts and stops the replicas.
"""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Any

from asgiserve.extras import install_hint

try:
    import httpx
    from starlette.testclient import TestClient as StarletteTestClient
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"asgiserve.testing needs httpx: {install_hint('testing')}") from exc

from asgiserve.api import delete, run
from asgiserve.backends import Backend
from asgiserve.deployment import Application, Deployment, deployment
from asgiserve.ingress import ingress
from asgiserve.router import Router

names = itertools.count(1)


def as_target(target: Any) -> Application | Deployment:
    """A bound application to serve; an ASGI app becomes the ingress of a deployment."""
    if isinstance(target, (Application, Deployment)):
        return target
    if not callable(target):
        raise TypeError(
            f"TestClient serves a bound application, a deployment or an ASGI app, not {target!r}"
        )

    class App:
        """The app, as the ingress of a deployment."""

    ingress(target)(App)
    return deployment(name=type(target).__name__)(App)


def serve(
    target: Any, backend: str | Backend | None, raise_server_exceptions: bool
) -> tuple[Router, str]:
    router = Router(backend=backend)
    router.raise_server_exceptions = raise_server_exceptions
    name = f"testclient-{next(names)}"
    run(as_target(target), name=name, route_prefix="/", router=router, backend=backend)
    return router, name


class TestClient(StarletteTestClient):
    """Starlette's `TestClient` over `target`'s own router; see the module's docs."""

    __test__ = False  # not a test class, for pytest

    def __init__(
        self,
        target: Any,
        backend: str | Backend | None = None,
        raise_server_exceptions: bool = True,
        **kwargs: Any,
    ) -> None:
        self.router, self.app_name = serve(target, backend, raise_server_exceptions)
        super().__init__(self.router, raise_server_exceptions=raise_server_exceptions, **kwargs)

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # the router's lifespan shutdown: replicas stop
        finally:
            self.close()

    def close(self) -> None:
        super().close()
        delete(self.app_name)


class AsyncTestClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` over `target`'s own router; see the module's docs."""

    def __init__(
        self,
        target: Any,
        backend: str | Backend | None = None,
        raise_server_exceptions: bool = True,
        base_url: str = "http://testserver",
        **kwargs: Any,
    ) -> None:
        self.router, self.app_name = serve(target, backend, raise_server_exceptions)
        transport = httpx.ASGITransport(
            app=self.router, raise_app_exceptions=raise_server_exceptions
        )
        super().__init__(transport=transport, base_url=base_url, **kwargs)

    async def __aenter__(self) -> AsyncTestClient:
        await super().__aenter__()
        await self.router.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        try:
            await self.router.stop()
        finally:
            await super().__aexit__(exc_type, exc, traceback)
            delete(self.app_name)
