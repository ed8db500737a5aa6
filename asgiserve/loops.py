"""Event loops for callers that have none: plain scripts and worker threads.

Calls run on the caller's loop when it has one. Synchronous callers (`.result()`, plain
`for` over a stream, `shutdown()`) use one background loop thread, started on first need.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

lock = threading.Lock()
background: asyncio.AbstractEventLoop | None = None
this_thread = threading.local()


def serving_loop() -> asyncio.AbstractEventLoop:
    """The running loop, remembered per thread.

    On Python 3.11 `asyncio.get_running_loop()` makes a getpid() system call each time; a
    thread runs one loop at a time, so the one it ran last is it while still running.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(this_thread, "loop", None)
    if loop is None or not loop.is_running():
        loop = this_thread.loop = asyncio.get_running_loop()
    return loop


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def background_loop() -> asyncio.AbstractEventLoop:
    global background
    with lock:
        if background is None or background.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="asgiserve-loop", daemon=True
            )
            thread.start()
            background = loop
        return background


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run `coro` to completion from synchronous code, on the background loop."""
    if running_loop() is not None:
        coro.close()
        raise RuntimeError(
            "this blocking call was made from inside a running event loop, which it would "
            "block; use the async form (await) instead"
        )
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    return future.result(timeout_s)


async def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T | None:
    """Await `coro` on `loop`, which may belong to another thread; None if that loop is gone."""
    if loop is running_loop():
        return await coro
    if loop.is_closed() or not loop.is_running():
        coro.close()
        return None
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def close_soon(coro: Coroutine[Any, Any, Any]) -> None:
    """Run cleanup from synchronous code: as a task inside a loop, else to completion."""
    loop = running_loop()
    if loop is not None:
        loop.create_task(coro)
    else:
        run_sync(coro)


def ignore_outcome(task: asyncio.Future[Any]) -> None:
    """For a task nobody awaits any more: retrieve its outcome so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
