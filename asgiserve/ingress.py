"""`@asgiserve.ingress`: a FastAPI or Starlette app as a deployment's HTTP entry.

Routes declared on methods (`@app.get("/")` over `def root(self)`) are class-based views:
in each replica they are rebuilt around the replica's own instance, on a copy of the app
that holds only this class's methods, so two deployments can share one app object.
"""

from __future__ import annotations

import copy
import inspect
import types
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

INGRESS_ATTR = "__asgiserve_ingress__"

T = TypeVar("T")


def ingress(app: ASGIApp) -> Callable[[T], T]:
    """Make `app` the HTTP entry of the decorated class (or function) deployment."""

    def decorate(target: T) -> T:
        inner = getattr(target, "target", target)  # also accept an already-built Deployment
        setattr(inner, INGRESS_ATTR, app)
        return target

    return decorate


def ingress_app(target: Any) -> ASGIApp | None:
    return getattr(target, INGRESS_ATTR, None)


class ReplicaApp:
    """An ingress app each replica builds from its own instance.

    For deployments whose routes depend on constructor arguments (`DAGDriver` builds its
    routes around the handles it is given), so there is no app object to share up front.
    """

    def __init__(self, make: Callable[[Any], ASGIApp]) -> None:
        self.make = make

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a ReplicaApp is built per replica; it is not served directly")


def method_owner(route: BaseRoute) -> str | None:
    """The qualified name of the class whose body defined the route's endpoint, if any."""
    endpoint = getattr(route, "endpoint", None)
    qualname = getattr(endpoint, "__qualname__", "")
    owner, _, _ = qualname.rpartition(".")
    if not owner or owner.endswith("<locals>"):
        return None
    params = list(inspect.signature(endpoint).parameters)  # type: ignore[arg-type]
    return owner if params[:1] == ["self"] else None


def rebuild_route(route: BaseRoute, endpoint: Callable[..., Any]) -> BaseRoute:
    """The same route around another endpoint, so FastAPI re-reads its signature.

    FastAPI reads an endpoint's parameters once, when the route is made; a bound method
    has no `self` parameter, so the rebuilt route asks the client for no `self`.
    """
    route_cls: Any = type(route)
    params = inspect.signature(route_cls.__init__).parameters
    options = {
        name: getattr(route, name)
        for name in params
        if name not in ("self", "endpoint") and hasattr(route, name)
    }
    rebuilt: BaseRoute = route_cls(endpoint=endpoint, **options)
    return rebuilt


def build_app(app: ASGIApp, cls: type, instance: object) -> ASGIApp:
    """The app one replica serves, as the user wrote it, with class views bound.

    Its own exception handlers and error answers stand; the router adds `x-request-id`
    and logs what the app raised.
    """
    if isinstance(app, ReplicaApp):
        return app.make(instance)
    return bind_class_views(app, cls, instance)


def bind_class_views(app: ASGIApp, cls: type, instance: object) -> ASGIApp:
    """Class-view routes bound to `instance`, other classes' dropped (on a copy)."""
    router = getattr(app, "router", None)
    routes: list[BaseRoute] = list(getattr(router, "routes", []))
    if not has_class_views(routes):
        return app  # served as it is
    # Routes a base class declared are the subclass's too.
    owners = {klass.__qualname__ for klass in cls.__mro__ if klass is not object}
    # A class shipped to a worker by value loses its `__qualname__`; its functions keep theirs.
    owners |= {
        value.__qualname__.rpartition(".")[0]
        for klass in cls.__mro__
        for value in vars(klass).values()
        if inspect.isfunction(value)
    }
    served: Any = copy.copy(app)
    served_router = copy.copy(router)
    served_router.routes = serve_routes(routes, owners, instance)  # type: ignore[union-attr]
    # Starlette's Router dispatches through a bound method of the router it was built as.
    served_router.middleware_stack = served_router.app  # type: ignore[union-attr]
    served.router = served_router
    served.middleware_stack = None
    if hasattr(served, "openapi_schema"):
        served.openapi_schema = None
        served.setup()  # docs routes that describe this copy, not the shared original
    result: ASGIApp = served
    return result


def has_class_views(routes: list[BaseRoute]) -> bool:
    return any(
        method_owner(route) is not None or has_class_views(included_routes(route))
        for route in routes
    )


def included_routes(route: BaseRoute) -> list[BaseRoute]:
    """The routes of an `APIRouter` that `include_router` added by reference.

    Newer FastAPI keeps an included router as one route holding `original_router`, instead
    of copying its routes into the app; class-view methods declared on it live in there.
    """
    return list(getattr(getattr(route, "original_router", None), "routes", []))


def serve_routes(routes: list[BaseRoute], owners: set[str], instance: object) -> list[BaseRoute]:
    """`routes` with `owners`' methods bound to `instance` and other classes' methods dropped."""
    served: list[BaseRoute] = []
    for route in routes:
        owner = method_owner(route)
        if owner is None:
            if has_class_views(included_routes(route)):
                served.append(rebuild_included(route, owners, instance))
            elif not is_docs_route(route):
                served.append(route)
        elif owner in owners:
            bound = types.MethodType(route.endpoint, instance)  # type: ignore[attr-defined]
            served.append(rebuild_route(route, bound))
    return served


def rebuild_included(route: BaseRoute, owners: set[str], instance: object) -> BaseRoute:
    """An included router's route again, around a copy of the router with bound methods."""
    included: Any = route
    router = copy.copy(included.original_router)
    router.routes = serve_routes(router.routes, owners, instance)
    rebuilt: BaseRoute = type(included)(
        original_router=router, include_context=included.include_context
    )
    return rebuilt


def is_docs_route(route: BaseRoute) -> bool:
    """FastAPI's own /openapi.json, /docs and /redoc routes, which describe their app."""
    qualname = getattr(getattr(route, "endpoint", None), "__qualname__", "")
    return qualname.startswith("FastAPI.setup.")
