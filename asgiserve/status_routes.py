"""The routes the router answers itself, before any prefix: health, routes, status, metrics.

They answer as Ray Serve's proxy does (`/-/healthz`, `/-/routes`), plus `/-/status` and
`/-/metrics`; `Router(status_routes=False)` leaves these paths to the applications.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Scope

if TYPE_CHECKING:
    from asgiserve.router import Router

STATUS_PATHS = ("/-/healthz", "/-/routes", "/-/status", "/-/metrics")


async def status_response(router: Router, path: str, scope: Scope) -> Response:
    """`/-/healthz`: 200 once every application has all its replicas, else 503 saying
    which have how many; `/-/routes`: route prefix -> application, as Serve answers;
    `/-/status`: `asgiserve.status()`; `/-/metrics`: Prometheus' page."""
    if scope["method"] not in ("GET", "HEAD"):
        return PlainTextResponse("Method Not Allowed", 405, {"allow": "GET, HEAD"})
    if path == "/-/metrics":
        from asgiserve import metrics_page  # prometheus_client is imported on first scrape

        accept = Headers(scope=scope).get("accept", "")
        body, content_type = await metrics_page.render(router.applications(), accept)
        return Response(body, headers={"content-type": content_type})
    if path == "/-/routes":
        return JSONResponse({route.prefix: route.app.name for route in reversed(router.routes)})
    if path == "/-/status":
        from asgiserve.api import status  # the module-level API imports this one

        return JSONResponse(status())
    waiting = router.not_ready()
    if waiting:
        return PlainTextResponse("\n".join(waiting) + "\n", 503, {"retry-after": "1"})
    return PlainTextResponse("success")
