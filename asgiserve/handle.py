"""Handles: the Python path into the same schedulers the router uses.

A handle is just names (application, deployment, method); it pickles as such and finds its
scheduler where it is used, so it can travel into replicas for model composition.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from starlette.types import Message

from asgiserve import metrics, registry, tracing
from asgiserve.backends.base import Call
from asgiserve.context import new_request_id
from asgiserve.loops import background_loop, running_loop


async def never() -> Message:
    """`receive` for Python calls: nothing arrives; cancellation comes by cancelling the task."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


async def resolve_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Responses passed as arguments are awaited first, which chains the calls.

    If this call is cancelled, or one of them fails, they are all cancelled: nobody will
    use their results, and each holds a replica slot.
    """
    given = [a for a in (*args, *kwargs.values()) if isinstance(a, DeploymentResponse)]
    if given:
        try:
            for response in given:
                await response
        except BaseException:
            for response in given:
                response.cancel()
            raise
        args = tuple([await a if isinstance(a, DeploymentResponse) else a for a in args])
        kwargs = {
            k: await v if isinstance(v, DeploymentResponse) else v for k, v in kwargs.items()
        }
    return args, kwargs


class DeploymentHandle:
    def __init__(
        self,
        deployment_name: str,
        app_name: str = "default",
        *,
        method_name: str = "__call__",
        stream: bool = False,
        version: str = "",
        multiplexed_model_id: str = "",
    ) -> None:
        self.deployment_name = deployment_name
        self.app_name = app_name
        self.method_name = method_name
        self.stream = stream
        self.version = version  # the code it reaches, where replicas are shared (Ray)
        self.multiplexed_model_id = multiplexed_model_id
        self.cached: registry.Dispatcher | None = None

    def __repr__(self) -> str:
        return (
            f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r}, "
            f"method={self.method_name!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            rebuild_handle,
            (
                self.deployment_name,
                self.app_name,
                self.method_name,
                self.stream,
                self.version,
                self.multiplexed_model_id,
            ),
        )

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def options(
        self,
        *,
        method_name: str | None = None,
        stream: bool | None = None,
        multiplexed_model_id: str | None = None,
    ) -> DeploymentHandle:
        return DeploymentHandle(
            self.deployment_name,
            self.app_name,
            method_name=self.method_name if method_name is None else method_name,
            stream=self.stream if stream is None else stream,
            version=self.version,
            multiplexed_model_id=(
                self.multiplexed_model_id if multiplexed_model_id is None else multiplexed_model_id
            ),
        )

    def scheduler(self) -> registry.Dispatcher:
        if self.cached is None or self.cached.closed:
            self.cached = registry.get_dispatcher(
                self.app_name, self.deployment_name, self.version
            )
        return self.cached

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Send a call; a `DeploymentResponse`, or a generator with `stream=True`."""
        if self.stream:
            return DeploymentResponseGenerator(self, args, kwargs)
        return DeploymentResponse(self.call(args, kwargs))

    def new_call(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        call = Call(new_request_id(), kind, self.method_name, args, kwargs)  # type: ignore[arg-type]
        metrics.record(
            metrics.HANDLE_REQUESTS, 1, self.app_name, self.deployment_name, self.method_name
        )
        if self.multiplexed_model_id:
            call.model_id = self.multiplexed_model_id
        call.trace = tracing.current()  # a span opened in the caller is the callee's parent
        return call

    async def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args, kwargs = await resolve_arguments(args, kwargs)
        result: list[Any] = []

        async def send(message: Message) -> None:
            result.append(message["value"])

        await self.scheduler().handle(self.new_call("call", args, kwargs), never, send)
        return result[0]


def rebuild_handle(
    deployment_name: str,
    app_name: str,
    method_name: str,
    stream: bool,
    version: str = "",
    multiplexed_model_id: str = "",
) -> DeploymentHandle:
    return DeploymentHandle(
        deployment_name,
        app_name,
        method_name=method_name,
        stream=stream,
        version=version,
        multiplexed_model_id=multiplexed_model_id,
    )


class DeploymentResponse:
    """The future result of one call: `await` it, or `.result()` from synchronous code."""

    def __init__(self, coro: Any) -> None:
        loop = running_loop()
        self.task: asyncio.Task[Any] | None = None
        self.future: Future[Any] | None = None
        if loop is not None:
            self.task = loop.create_task(coro)
        else:
            self.future = asyncio.run_coroutine_threadsafe(coro, background_loop())

    def __await__(self) -> Generator[Any, None, Any]:
        if self.task is not None:
            return self.task.__await__()
        assert self.future is not None
        return asyncio.wrap_future(self.future).__await__()

    def result(self, timeout_s: float | None = None) -> Any:
        if self.future is None:
            raise RuntimeError(
                ".result() was called inside the event loop that runs the call, which would "
                "block it forever; use `await response` instead"
            )
        try:
            return self.future.result(timeout_s)
        except FutureTimeoutError:
            raise TimeoutError(f"no result within {timeout_s} s") from None

    def cancel(self) -> None:
        """Cancel the call: dropped if still queued, `CancelledError` in the replica if running."""
        if self.task is not None:
            self.task.cancel()
        elif self.future is not None:
            self.future.cancel()


END = object()


class DeploymentResponseGenerator:
    """The items of a streaming call, for `async for` and for plain `for`."""

    def __init__(self, handle: DeploymentHandle, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.handle = handle
        self.args = args
        self.kwargs = kwargs
        loop = running_loop()
        self.items: asyncio.Queue[Any] | queue.Queue[Any]
        if loop is not None:
            self.items = asyncio.Queue()
            self.task: asyncio.Task[None] | None = loop.create_task(self.produce())
            self.future: Future[None] | None = None
        else:
            self.items = queue.Queue()
            self.task = None
            self.future = asyncio.run_coroutine_threadsafe(self.produce(), background_loop())

    async def produce(self) -> None:
        items = self.items

        async def send(message: Message) -> None:
            items.put_nowait(message["value"])

        try:
            args, kwargs = await resolve_arguments(self.args, self.kwargs)
            call = self.handle.new_call("stream", args, kwargs)
            await self.handle.scheduler().handle(call, never, send)
        except BaseException as exc:
            items.put_nowait(Failure(exc))
            if not isinstance(exc, Exception):
                raise
        else:
            items.put_nowait(END)

    def unwrap(self, item: Any) -> Any:
        if isinstance(item, Failure):
            raise item.error
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if isinstance(self.items, asyncio.Queue):
            item = await self.items.get()
        else:
            item = await asyncio.to_thread(self.items.get)
        if item is END:
            raise StopAsyncIteration
        return self.unwrap(item)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not isinstance(self.items, queue.Queue):
            raise RuntimeError("use `async for` on a stream started inside an event loop")
        item = self.items.get()
        if item is END:
            raise StopIteration
        return self.unwrap(item)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        elif self.future is not None:
            self.future.cancel()


class Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
