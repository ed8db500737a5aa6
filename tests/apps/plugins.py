"""Routes that another module adds to an app by decorator, and a registry filled at import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REGISTRY: dict[str, Callable[..., Any]] = {}


def registered(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Put a function in `REGISTRY` at import time, as plugin systems do."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = fn
        return fn

    return register


def add_health_routes(app: Any) -> None:
    """Add routes to someone else's FastAPI app, as extensions (`include_*` helpers) do."""

    @app.get("/plugin/ping")
    def ping() -> dict[str, str]:
        return {"pong": "from plugins"}
