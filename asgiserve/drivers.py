"""`DAGDriver`: an ingress deployment that parses each request with an HTTP adapter and
passes the result to the application it was bound to.

    DAGDriver.bind(Model.bind(), http_adapter=json_to_ndarray)
    DAGDriver.bind({"/a": A.bind(), "/b": B.bind()}, http_adapter=json_request)

Each replica builds a FastAPI app of its own around the handles it is given, so `/docs`
and `/openapi.json` under the driver's prefix show the adapter's input schema. FastAPI is
imported there, not here: `import asgiserve` stays light.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from asgiserve.context import get_request_context
from asgiserve.deployment import Deployment, deployment
from asgiserve.handle import DeploymentHandle
from asgiserve.ingress import ReplicaApp, ingress
from asgiserve.responses import error_response


def load_adapter(adapter: Any) -> Any:
    """The adapter itself, or the one a `"module.attr"` or `"module:attr"` string names."""
    if adapter is None:
        from asgiserve.adapters import starlette_request

        return starlette_request
    if isinstance(adapter, str):
        module, sep, attr = adapter.partition(":")
        if not sep:
            module, _, attr = adapter.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    return adapter


def is_model(adapter: Any) -> bool:
    from pydantic import BaseModel

    return inspect.isclass(adapter) and issubclass(adapter, BaseModel)


def make_endpoint(handle: DeploymentHandle, adapter: Any) -> Callable[..., Any]:
    """`async def endpoint(inp)`: the adapter's result (or the validated model) to `handle`."""
    from fastapi import Body, Depends
    from starlette.responses import Response

    from asgiserve.responses import JSONResponse

    async def endpoint(inp: Any) -> Any:
        """JSON, as a FastAPI route answers and Ray Serve's driver did (a `str` too)."""
        result = await handle.remote(inp)
        return result if isinstance(result, Response) else JSONResponse(result)

    # FastAPI reads the signature: a pydantic model is the JSON body, a function a dependency
    if is_model(adapter):
        annotation, default = adapter, Body()
    else:
        annotation, default = Any, Depends(adapter)
    parameter = inspect.Parameter(
        "inp", inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )
    endpoint.__signature__ = inspect.Signature([parameter])  # type: ignore[attr-defined]
    return endpoint


def check_routes(dags: dict[str, Any]) -> None:
    for route, handle in dags.items():
        if not isinstance(route, str) or not route.startswith("/"):
            raise ValueError(f"DAGDriver routes must be paths starting with '/', got {route!r}")
        if not isinstance(handle, DeploymentHandle):
            raise TypeError(
                f"DAGDriver route {route!r} must map to a bound application "
                f"(Deployment.bind()), got {handle!r}"
            )


def build_driver_app(driver: Driver) -> Any:
    from fastapi import FastAPI

    app = FastAPI(title="DAGDriver")
    # The driver is asgiserve's app: its 500s name the request id, as plain deployments' do.
    app.add_exception_handler(Exception, internal_error)
    for route, handle in driver.dags.items():
        endpoint = make_endpoint(handle, driver.http_adapter)
        for method in ("GET", "POST"):
            app.add_api_route(
                route,
                endpoint,
                methods=[method],
                name="predict",
                response_model=None,
            )
    return app


def internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "Internal Server Error", get_request_context().request_id)


def driver_app(driver: Driver) -> Any:
    return driver.app


class Driver:
    """Serves one application at `/`, or several, one per route, under one adapter.

    `http_adapter` is a function with a FastAPI-style signature (query parameters, body,
    headers, files; see `asgiserve.adapters`), a pydantic model class (the JSON body is
    validated against it and the instance passed on), a `"module.attr"` string naming
    either, or None for the Starlette request itself.
    """

    def __init__(
        self, dags: DeploymentHandle | dict[str, DeploymentHandle], http_adapter: Any = None
    ) -> None:
        self.dags = dags if isinstance(dags, dict) else {"/": dags}
        check_routes(self.dags)
        self.http_adapter = load_adapter(http_adapter)
        self.app = build_driver_app(self)

    async def predict(self, *args: Any, **kwargs: Any) -> Any:
        """For Python callers: call the application at `/` without going through HTTP."""
        return await self.predict_with_route("/", *args, **kwargs)

    async def predict_with_route(self, route_path: str, *args: Any, **kwargs: Any) -> Any:
        """For Python callers: call the application served at `route_path`."""
        if route_path not in self.dags:
            raise KeyError(f"no application at {route_path!r}; routes: {sorted(self.dags)}")
        return await self.dags[route_path].remote(*args, **kwargs)


DAGDriver: Deployment = deployment(name="DAGDriver")(ingress(ReplicaApp(driver_app))(Driver))
