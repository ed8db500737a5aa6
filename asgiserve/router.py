"""The Router: an ASGI app that sends each request to the application owning its prefix.

It knows nothing of processes or Ray: it matches a prefix, gives the request an id, and
hands the ASGI exchange to that application's ingress scheduler.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

from starlette.middleware import Middleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asgiserve import context, heap, metrics, registry, tracing
from asgiserve.backends import Backend
from asgiserve.backends.base import Call
from asgiserve.config import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_SIZE
from asgiserve.exceptions import RequestTimeoutError
from asgiserve.failures import failure_response, server_error
from asgiserve.logs import ACCESS_LOGGER
from asgiserve.metrics import FOLD_AT
from asgiserve.multiplex import HEADERS as MODEL_HEADERS
from asgiserve.prefixes import ROOT_MATCH, BadPathParameter, PrefixRoute, make_route
from asgiserve.responses import error_response
from asgiserve.status_routes import STATUS_PATHS, status_response
from asgiserve.tracing import TRACEPARENT
from asgiserve.watch import BodyTooLarge, RequestWatch, watchlist

logger = logging.getLogger("asgiserve")
# One line per request at INFO: app, deployment, replica, request id, method, route, status,
# ms; a deployment's `logging_config=LoggingConfig(enable_access_log=False)` has none.
access_log = logging.getLogger(ACCESS_LOGGER)

# Keys that belong to the outer app; the ingress app is a top-level app of its own.
OUTER_KEYS = ("app", "router", "endpoint", "route", "app_root_path", "path_params")
# A client's `x-request-id` is only a label, kept when it is visible ASCII of at most 200
# characters; inside replicas a call is known by ids the server makes.
CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}")
# The request headers the router reads; ASGI servers give their names in lower case.
SCANNED_HEADERS = frozenset(
    (b"x-request-id", b"content-length", b"transfer-encoding", b"traceparent", *MODEL_HEADERS)
)


def access_logged(app: registry.RunningApp) -> bool:
    """Whether the application's ingress deployment wants its access lines."""
    scheduler = app.schedulers.get(app.ingress)
    chosen = None if scheduler is None else scheduler.config.logging_config
    return chosen is None or chosen.enable_access_log


class Exchange(RequestWatch):
    """One HTTP or WebSocket exchange as the router tracks it; an HTTP one is also its own
    disconnect watch (one object per request: each costs as much as a dozen lines)."""

    # Class-level defaults: most requests have none of the headers that set them.
    model_id = ""  # the multiplexed model the request names, if any
    traceparent = ""  # the W3C trace context the request came with, if well formed
    content_length = -1
    expects_body = False
    status = 0
    dropped = False  # the router answered for the handler (timeout): drop its messages

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        max_body_size: int,
        body_timeout_s: float | None,
    ) -> None:
        request_id = ""
        for key, value in scope["headers"]:
            if key not in SCANNED_HEADERS:  # one set lookup for the common header
                continue
            if key == b"x-request-id":
                if CLIENT_REQUEST_ID.fullmatch(value):  # else a log line could be forged
                    request_id = value.decode("ascii")
            elif key == b"content-length":
                if value.isdigit():
                    self.content_length = int(value)
                    self.expects_body = self.content_length > 0
            elif key == b"transfer-encoding":
                self.expects_body = True  # chunked
            elif key == b"traceparent":
                if TRACEPARENT.fullmatch(value):
                    self.traceparent = value.decode("ascii")
            else:  # MODEL_HEADERS
                self.model_id = value.decode("latin-1")
        if not request_id:
            request_id = next(context.request_ids)  # `new_request_id()` without its call
        self.request_id = request_id
        self.header = (b"x-request-id", request_id.encode("latin-1"))
        self.server_receive = receive
        self.server_send = send
        self.max_body_size = max_body_size
        self.body_timeout_s = body_timeout_s
        self.watchlist = found = watchlist()
        task = asyncio.current_task(found.loop)
        assert task is not None
        self.task = task

    async def send(self, message: Message) -> None:
        """The handler's `send`: adds the request id, notes the status and the end."""
        if self.dropped:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", ()), self.header]
        elif kind == "http.response.body" and not (
            "more_body" in message and message["more_body"]  # no `get` call: the usual last body
        ):
            self.complete = True  # a disconnect from now on is normal: cancel nothing
        await self.server_send(message)

    async def reply(self, message: Message) -> None:
        """The router's own answers (errors, timeouts), sent even once the handler's are not."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", ()), self.header]
        await self.server_send(message)


class Router:
    """An ASGI app; mount it in your own: `app.mount("/", asgiserve.router)`."""

    def __init__(
        self,
        *,
        backend: str | Backend | None = None,
        middleware: Sequence[Middleware] | None = None,
        request_timeout_s: float | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
        debug: bool = False,
        status_routes: bool = True,
    ) -> None:
        self.backend = backend
        self.request_timeout_s = request_timeout_s
        self.max_body_size = max_body_size
        self.body_timeout_s = body_timeout_s
        self.debug = debug
        self.status_routes = status_routes  # `/-/healthz`, `/-/routes`, `/-/status`, `/-/metrics`
        self.meter = metrics.HTTPMeter() if metrics.enabled() else None
        # Re-raise an application's error after its 500 goes out, as Starlette's
        # ServerErrorMiddleware does, so a test client sees it (`asgiserve.testing`).
        self.raise_server_exceptions = False
        self.routes: list[PrefixRoute] = []
        self.writer: asyncio.Task[None] | None = None  # `--workers N`: samples for the others
        # `Router(middleware=...)`: what a request passes through before the router's own work.
        self.app: ASGIApp | None = None
        if middleware:
            app: ASGIApp = functools.partial(self.__call__, passed=True)
            for cls, args, kwargs in reversed(middleware):
                app = cls(app, *args, **kwargs)
            self.app = app

    # -- the prefix table ------------------------------------------------------------

    def check_prefix(self, prefix: str, app_name: str) -> None:
        for route in self.routes:
            if route.prefix == prefix and route.app.name != app_name:
                raise ValueError(
                    f"route_prefix {prefix!r} is already used by application "
                    f"{route.app.name!r}; delete it or choose another prefix"
                )

    def add_route(self, prefix: str, app: registry.RunningApp) -> None:
        self.check_prefix(prefix, app.name)
        self.remove_routes(app.name)
        self.routes.append(make_route(prefix, app))
        self.routes.sort(key=lambda route: len(route.prefix), reverse=True)

    def remove_routes(self, app_name: str) -> None:
        self.routes = [route for route in self.routes if route.app.name != app_name]

    def applications(self) -> list[registry.RunningApp]:
        return [app for app in registry.applications.values() if app.router is self]

    def not_ready(self) -> list[str]:
        """A progress line for each application on this router still short of replicas."""
        mine = [app for app in registry.every_app() if app.router is self]
        return [app.progress() for app in mine if not app.ready]

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, *, passed: bool = False
    ) -> None:
        """One request; `passed` once it went through the router's middleware. All in one
        function: another coroutine in the way costs a noop request about 1%."""
        if scope["type"] == "lifespan":
            await self.serve_lifespan(receive, send)
            return
        if self.app is not None and not passed:
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        path = scope["path"]
        route_path = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        exchange = Exchange(scope, receive, send, self.max_body_size, self.body_timeout_s)
        if self.status_routes and route_path in STATUS_PATHS and scope["type"] == "http":
            answer = await status_response(self, route_path, scope)
            await answer(scope, receive, exchange.send)
            return
        try:
            for route in self.routes:
                # Every path is under `/`, the usual only prefix: no call to learn that.
                found = ROOT_MATCH if route.prefix == "/" else route.match(route_path)
                if found is not None:
                    break
            else:
                found = None
        except BadPathParameter as exc:
            if scope["type"] == "http":
                response = error_response(400, str(exc), exchange.request_id)
                await response(scope, receive, exchange.send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if found is None:
            if await self.fall_through(scope, receive, send):
                return
            if scope["type"] == "http":
                response = error_response(404, "Not Found", exchange.request_id)
                await response(scope, receive, exchange.send)
            else:
                await send({"type": "websocket.close", "code": 1000})
            return

        matched, params = found
        child = dict(scope)
        try:  # under Starlette's Mount all are there, and `del` costs a sixth of `pop`
            del child["app"], child["router"], child["endpoint"], child["route"]
            del child["app_root_path"], child["path_params"]
        except KeyError:  # the router is the server's app, or another framework's
            for key in OUTER_KEYS:
                child.pop(key, None)
        child["root_path"] = root_path + route_path[:matched]
        if matched and matched == len(route_path):
            # `/hello` reaches the ingress app's `/` route, not a redirect to `/hello/`.
            child["path"] = path + "/"
            child["raw_path"] = scope.get("raw_path", path.encode()) + b"/"
        if params:
            child["path_params"] = params
        app = route.app
        # Positional: a dataclass's generated __init__ matches keywords slowly.
        call = Call(exchange.request_id, "asgi", "__call__", (), {}, child, route.prefix)
        if exchange.model_id:
            call.model_id = exchange.model_id
        if exchange.traceparent:
            call.trace = exchange.traceparent
        method = scope.get("method", "WEBSOCKET")
        work = self.serve(app, call, scope, receive, exchange)
        # `tracing.recording()` is called only once OpenTelemetry is found and its provider
        # is set (the global it reads first; an API without that global is asked anyway):
        # a call costs ~0.5% of a request, and most servers never trace.
        trace = tracing.api
        if not tracing.looked or (
            trace is not None and getattr(trace, "_TRACER_PROVIDER", trace) is not None
        ):
            if tracing.recording():
                work = self.traced(work, call, f"{method} {route.prefix}", exchange)
        meter = self.meter
        logged = access_log.isEnabledFor(logging.INFO) and access_logged(app)
        if meter is None and not logged:
            await work
            return
        started = perf_counter()
        app.http_ongoing += 1
        try:
            await work
        finally:
            app.http_ongoing -= 1
            elapsed_ms = (perf_counter() - started) * 1000
            if meter is not None:  # `meter.answer`, inline: a call costs ~1% of a request
                try:
                    series = meter.answered[app.name, route.prefix, method, exchange.status]
                except KeyError:
                    series = meter.series(app.name, route.prefix, method, exchange.status)
                pending = series.pending
                pending.append(elapsed_ms)  # `series.observe`, inline
                if len(pending) >= FOLD_AT:
                    series.fold()
        if logged:
            access_log.info(
                "%s %s %s %s %s %s %s %.1fms",
                app.name,
                app.ingress,
                call.replica_id or "-",
                exchange.request_id,
                method,
                route.prefix,
                exchange.status or "-",
                elapsed_ms,
                extra={"application": app.name, "deployment": app.ingress,
                       "replica": call.replica_id, "request_id": exchange.request_id},
            )  # fmt: skip

    async def serve(
        self,
        app: registry.RunningApp,
        call: Call,
        scope: Scope,
        receive: Receive,
        exchange: Exchange,
    ) -> None:
        """Run one exchange on the application's ingress; errors become responses here."""
        scheduler = app.schedulers[app.ingress]
        if scope["type"] != "http":
            try:
                await scheduler.handle(call, receive, exchange.send)
            except Exception as exc:
                logger.exception("websocket %s to %r failed", exchange.request_id, app.name)
                await exchange.server_send({"type": "websocket.close", "code": 1011})
                if self.raise_server_exceptions and server_error(exc):
                    raise
            return
        if exchange.content_length > self.max_body_size:
            exchange.status = 413
            response = error_response(413, str(BodyTooLarge(self.max_body_size)), call.request_id)
            await response(scope, receive, exchange.send)
            return
        watchlist = exchange.watchlist  # `watchlist.add(exchange)`, inline
        if watchlist.timer is None:
            watchlist.arm()
        watchlist.waiting[exchange] = watchlist.period
        try:
            if exchange.expects_body:
                await exchange.prefetch()
                if exchange.disconnected:
                    exchange.status = 499  # gone before its body came: nothing to run
                    return
            if self.request_timeout_s is None:
                await scheduler.handle(call, exchange.receive, exchange.send)
            else:
                await self.within_deadline(scheduler.handle(call, exchange.receive, exchange.send))
        except asyncio.CancelledError:
            if not exchange.cancelled_request:
                raise
            # We cancelled it: the client left; nobody is waiting for an answer.
            exchange.task.uncancel()
            exchange.status = exchange.status or 499
        except Exception as exc:
            if exchange.disconnected:
                exchange.status = exchange.status or 499
            elif exchange.status:  # an ingress app's own error answer went out: it stands
                logger.error(
                    "request %s to application %r raised (answered %d)",
                    call.request_id,
                    app.name,
                    exchange.status,
                    exc_info=exc,
                )
                if self.raise_server_exceptions and exchange.status >= 500:
                    raise
            else:
                exchange.dropped = True  # whatever the handler sends from now on
                answer = failure_response(exc, call.request_id, app.name, self.debug)
                await answer(scope, receive, exchange.reply)
                if self.raise_server_exceptions and server_error(exc):
                    raise  # into the test, after the 500 went out (`asgiserve.testing`)
        finally:
            exchange.close()

    async def traced(
        self, work: Coroutine[Any, Any, None], call: Call, name: str, exchange: Exchange
    ) -> None:
        """Run `work` in the request's server span; the call carries that span on."""
        attributes = {"asgiserve.request_id": call.request_id}
        with tracing.server_span(name, call.trace, attributes) as span:
            call.trace = tracing.current()
            await work
            span.set_attribute("http.response.status_code", exchange.status)

    async def within_deadline(self, work: Coroutine[Any, Any, None]) -> None:
        """Await `work` until `request_timeout_s`; then cancel it and answer at once.

        The work unwinds in the background: a handler that swallows the cancellation
        gets its response dropped, and a synchronous one keeps its replica slot until its
        thread returns.
        """
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task,), timeout=self.request_timeout_s)
        finally:
            if not task.done():
                task.cancel()
        if not task.done():
            raise RequestTimeoutError(
                f"no response within request_timeout_s={self.request_timeout_s}"
            )
        task.result()

    async def fall_through(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Mounted at `/`, let the outer app's routes declared after the mount answer.

        `app.mount("/", asgiserve.router)` matches every path, so without this a route such
        as `@app.get("/double/{x}")` declared after the mount could never be reached.
        """
        outer = scope.get("router")
        routes = getattr(outer, "routes", None)
        if not routes or scope.get("root_path", "") != scope.get("app_root_path", ""):
            return False
        later = False
        partial = None
        for route in routes:
            if getattr(route, "app", None) is self:
                later = True
            elif later:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return True
                if match is Match.PARTIAL and partial is None:
                    partial = (route, child_scope)
        if partial is None:
            return False
        route, child_scope = partial
        scope.update(child_scope)
        await route.handle(scope, receive, send)
        return True

    # -- lifespan --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the replicas of every application on this router."""
        for app in self.applications():
            for scheduler in app.schedulers.values():
                await scheduler.ensure_started()
        if self.writer is None or self.writer.done():
            from asgiserve import metrics_page

            self.writer = metrics_page.start_writing(self.applications)
        heap.settle()

    async def stop(self) -> None:
        """Stop the replicas of every application on this router; next use starts them."""
        if self.writer is not None:
            self.writer.cancel()
        for app in self.applications():
            for scheduler in app.schedulers.values():
                await scheduler.stop()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Pass to your app (`FastAPI(lifespan=asgiserve.router.lifespan)`) or enter it in yours."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def serve_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, for when the router is the server's top-level app."""
        await receive()
        try:
            await self.start()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await self.stop()
        await send({"type": "lifespan.shutdown.complete"})
