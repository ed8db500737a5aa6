"""The replica runtime: the same code inside every backend.

It builds the user's object, then serves three kinds of call: an ASGI exchange (the
ingress app, or `__call__(request)` wrapped as one), a method call, and a streaming call.
Synchronous user code runs in a worker thread so one slow call does not stall the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import Any

import anyio.to_thread
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asgiserve import batching, context, heap, metrics, tracing
from asgiserve.backends.base import ITEM, RESULT, Call, Replica, ReplicaSpec
from asgiserve.ingress import build_app, ingress_app
from asgiserve.loops import on_loop
from asgiserve.multiplex import current_model_id
from asgiserve.responses import EncodeError, JSONResponse, error_response, to_response

logger = logging.getLogger("asgiserve")

DRAIN_POLL_S = 0.01


def takes_arguments(fn: Callable[..., Any]) -> bool:
    try:
        return bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return True


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


async def run_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking user code in a worker thread; cancelling waits for it to return.

    A thread cannot be interrupted, so a cancelled call finishes there, its result is
    dropped, and the replica counts it as running until then (`max_ongoing_requests`).
    """
    work = asyncio.ensure_future(anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs)))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(work)
        raise


async def invoke(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call user code: coroutines on the loop, plain functions in a worker thread."""
    if is_async(fn):
        result = await fn(*args, **kwargs)
    else:
        result = await run_in_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def call_now(fn: Callable[..., Any], *args: Any) -> Any:
    """Call user code from a constructor's thread; an `async def` runs to completion on
    a loop of its own, in another thread (this one may be running a loop already)."""
    result = fn(*args)
    if inspect.isawaitable(result):

        async def wait() -> Any:
            return await result

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, wait()).result()
    return result


async def drain(tasks: set[asyncio.Task[Any]], timeout_s: float) -> None:
    """Let running calls finish within `timeout_s`, then cancel the rest (graceful stop)."""
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1)


class RequestHandler:
    """`__call__(request)` as an ASGI app; its return value becomes the response."""

    def __init__(self, fn: Callable[..., Any], name: str = "") -> None:
        self.fn = fn
        self.name = name  # `Deployment.__call__`, for the error a return value can cause
        self.with_request = takes_arguments(fn)
        self.coroutine = is_async(fn)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        args = (Request(scope, receive),) if self.with_request else ()
        if self.coroutine:
            result = await self.fn(*args)
        else:
            result = await run_in_thread(self.fn, *args)
            if inspect.isawaitable(result):
                result = await result
        try:
            # A dict, the common answer, without a call (`to_response` would say the same).
            response = JSONResponse(result) if type(result) is dict else to_response(result)
        except EncodeError as exc:  # a 500, and the log line says whose and what
            raise EncodeError(
                f"{self.name} returned {type(result).__name__}, which cannot be the response: "
                f"{exc}"
            ) from None
        await response(scope, receive, send)


class NoHTTP:
    """The HTTP entry of a deployment with neither `__call__` nor an ingress app."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        detail = (
            f"deployment {self.name!r} has no __call__ method and no ingress app, so it "
            "answers handle calls only"
        )
        response = error_response(404, detail, context.get_request_context().request_id)
        await response(scope, receive, send)


class Lifespan:
    """Drives an app's ASGI lifespan (startup and shutdown events) as a server does.

    An ingress app's runs inside its replica, with a scope of its own; `asgiserve run`
    drives the served app's with the server's scope, so its `state` reaches requests. An
    app without lifespan support (it raises, or returns, at once) has none.
    """

    def __init__(self, app: ASGIApp, scope: Scope | None = None) -> None:
        self.app = app
        self.scope = scope or {"type": "lifespan", "asgi": {"version": "3.0"}}
        self.state: dict[str, Any] = self.scope.setdefault("state", {})
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.replies: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.replies.put)
        except BaseException as exc:  # an app without lifespan support raises here
            if self.started:
                logger.exception("the app's lifespan raised")
            await self.replies.put({"type": "asgiserve.lifespan.unsupported", "error": exc})

    async def receive(self) -> Message:
        try:
            return await self.inbox.get()
        except asyncio.CancelledError:
            # The loop is closing under us (asyncio.run cancels every task at its end, as
            # uvicorn's does when no lifespan was wired): shut the app down cleanly instead.
            return {"type": "lifespan.shutdown"}

    async def send(self, event: str) -> None:
        await self.inbox.put({"type": f"lifespan.{event}"})
        reply = await self.replies.get()
        if reply["type"].endswith(".failed"):
            raise RuntimeError(f"the app's lifespan {event} failed: {reply.get('message', '')}")

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self.run())
        await self.send("startup")
        self.started = True

    async def shutdown(self) -> None:
        """Runs on the loop that ran startup, from whichever loop asks."""
        if self.loop is not None:
            await on_loop(self.loop, self.finish())

    async def finish(self) -> None:
        if self.task is not None and not self.task.done():
            await self.send("shutdown")
            await self.task


class ReplicaRuntime(Replica):
    """One replica. In-process it is the backend's `Replica` itself; other backends wrap it."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.replica_id = spec.replica_id
        self.ongoing = 0  # calls running now
        self.recorder = metrics.Recorder()  # what `GET /-/metrics` gets from this replica
        self.measured = metrics.enabled()
        labels = (spec.app_name, spec.deployment_name, spec.replica_id)
        self.latency = self.recorder.get(metrics.PROCESSING_LATENCY, labels)
        self.errors = self.recorder.get(metrics.REPLICA_ERRORS, labels)
        target = spec.target
        if inspect.isclass(target):
            self.instance: Any = target(*spec.init_args, **spec.init_kwargs)
        else:
            self.instance = target
        if spec.config.user_config is not None:
            reconfigure = getattr(self.instance, "reconfigure", None)
            if reconfigure is None or not inspect.isclass(target):
                raise TypeError(
                    f"deployment {spec.deployment_name!r} has a user_config but no "
                    "reconfigure(self, config) method to give it to"
                )
            call_now(reconfigure, spec.config.user_config)
        app = ingress_app(target)
        self.lifespan: Lifespan | None = None
        if app is not None:
            cls = target if inspect.isclass(target) else type(None)
            self.app: ASGIApp = build_app(app, cls, self.instance)
            self.lifespan = Lifespan(self.app)
        elif callable(self.instance):
            self.app = RequestHandler(self.method("__call__"), f"{spec.deployment_name}.__call__")
        else:
            self.app = NoHTTP(spec.deployment_name)

    def method(self, name: str) -> Callable[..., Any]:
        if name == "__call__" and not inspect.isclass(self.spec.target):
            return self.instance  # type: ignore[no-any-return]
        fn = getattr(self.instance, name, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"deployment {self.spec.deployment_name!r} has no method {name!r}")
        return fn  # type: ignore[no-any-return]

    async def start(self) -> None:
        if self.lifespan is not None:
            await self.lifespan.startup()
        heap.settle()

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        token = context.current.set((call.request_id, call.route, self))
        model = current_model_id.set(call.model_id) if call.model_id else None
        self.ongoing += 1
        started = perf_counter() if self.measured else 0.0
        trace = tracing.enter(call.trace) if call.trace else None
        try:
            if call.kind == "asgi":
                assert call.scope is not None
                scope = call.scope
                if self.lifespan is not None and self.lifespan.state:
                    scope = {**scope, "state": dict(self.lifespan.state)}
                await self.app(scope, receive, send)
            else:
                await self.call(call, send)
        except Exception:
            if self.measured:
                self.errors.value += 1
            raise
        finally:
            self.ongoing -= 1
            if self.measured:
                pending = self.latency.pending
                pending.append((perf_counter() - started) * 1000)  # `observe`, inline
                if len(pending) >= metrics.FOLD_AT:
                    self.latency.fold()
            try:
                if trace is not None:
                    tracing.leave(trace)
                if model is not None:
                    current_model_id.reset(model)
                context.current.reset(token)
            except ValueError:
                # A call torn down by garbage collection after its loop closed ends in
                # another context, where the token does not apply: nothing to restore.
                pass

    async def call(self, call: Call, send: Send) -> None:
        if call.kind == "call":
            value = await invoke(self.method(call.method), *call.args, **call.kwargs)
            if inspect.isgenerator(value) or inspect.isasyncgen(value):
                raise TypeError(
                    f"{self.spec.deployment_name}.{call.method} returned a generator; "
                    "call it with handle.options(stream=True)"
                )
            await send({"type": RESULT, "value": value})
        else:
            async for item in self.stream(call):
                await send({"type": ITEM, "value": item})

    async def stream(self, call: Call) -> AsyncIterator[Any]:
        fn = self.method(call.method)
        if inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(
            getattr(fn, "__call__", None)  # noqa: B004 - a batched async generator method
        ):
            generator = fn(*call.args, **call.kwargs)
        else:
            generator = await invoke(fn, *call.args, **call.kwargs)
        if inspect.isasyncgen(generator):
            try:
                async for item in generator:
                    yield item
            finally:
                await generator.aclose()
        elif inspect.isgenerator(generator):
            async for item in iterate_in_threadpool(generator):
                yield item
        else:
            raise TypeError(
                f"{self.spec.deployment_name}.{call.method} was called with stream=True "
                f"but returned {type(generator).__name__}, not a generator"
            )

    async def check_health(self) -> dict[str, Any] | None:
        check = getattr(self.instance, "check_health", None)
        if check is not None and inspect.isclass(self.spec.target):
            await invoke(check)
        return batching.report(self.instance)

    async def metric_samples(self) -> metrics.Snapshot:
        return self.recorder.snapshot()

    async def stop(self, timeout_s: float = 0) -> None:
        """Let in-flight calls finish within `timeout_s`, then run the app's shutdown.

        Calls may run on other loops (a handle's synchronous callers), so this polls a
        count instead of waiting on their tasks. Other backends drain before calling it.
        """
        deadline = time.monotonic() + timeout_s
        while self.ongoing and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.lifespan is not None:
            await self.lifespan.shutdown()
        heap.release()
