"""Dynamic batching: `@asgiserve.batch` turns calls with one item each into one call
with a list, so a vectorised model runs once for many requests.

Each replica object has a queue per batched method, made on first use. A batch starts
when it is full, when `batch_wait_timeout_s` has passed since its first item, or at once
when nothing else is on its way: every call the replica is running is already waiting
here or in a running batch, so waiting could only add latency (a lone request on an idle
replica starts at once). At most `max_concurrent_batches` batches run at a time; items
that come meanwhile form the next batch, so batches grow with the load.

On a multiplexed deployment a batch holds one model's items only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from asgiserve import context, metrics, replica
from asgiserve.multiplex import current_model_id

END = object()  # a streaming caller's last message


class Item:
    """One caller's item and where its result goes."""

    __slots__ = ("value", "model_id", "future", "stream", "done", "arrived", "task")

    def __init__(self, value: Any, model_id: str, streaming: bool) -> None:
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.value = value
        self.model_id = model_id
        self.arrived = loop.time()
        self.future: asyncio.Future[Any] = loop.create_future()
        self.stream: asyncio.Queue[Any] | None = asyncio.Queue() if streaming else None
        self.done = False  # the caller left, or its stream ended

    def send(self, value: Any) -> None:
        if not self.done and self.stream is not None:
            self.stream.put_nowait(value)


class Options:
    """A batched method's settings; `set_*` on the method changes them for every object."""

    def __init__(
        self,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_concurrent_batches: int,
        batch_size_fn: Callable[[list[Any]], int] | None,
    ) -> None:
        self.set_max_batch_size(max_batch_size)
        self.set_batch_wait_timeout_s(batch_wait_timeout_s)
        if not isinstance(max_concurrent_batches, int) or max_concurrent_batches < 1:
            raise ValueError(
                "max_concurrent_batches must be an int of at least 1, "
                f"got {max_concurrent_batches!r}"
            )
        self.max_concurrent_batches = max_concurrent_batches
        self.batch_size_fn = batch_size_fn

    def set_max_batch_size(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"max_batch_size must be an int of at least 1, got {size!r}")
        self.max_batch_size = size

    def set_batch_wait_timeout_s(self, timeout: float) -> None:
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(
                f"batch_wait_timeout_s must be a number of at least 0, got {timeout!r}"
            )
        self.batch_wait_timeout_s = timeout


class Batcher:
    """The queue of one batched method on one object, on the event loop that uses it."""

    def __init__(self, fn: Callable[..., Any], owner: Any, options: Options) -> None:
        self.fn = fn
        self.owner = owner  # the replica object (`self`), or None for a plain function
        self.options = options
        self.name = getattr(fn, "__qualname__", "batch")
        self.streaming = inspect.isasyncgenfunction(fn)
        self.sync = not (self.streaming or inspect.iscoroutinefunction(fn))
        self.waiting: deque[Item] = deque()
        self.running = 0  # batches running
        self.in_batches = 0  # items in running batches
        self.timer: asyncio.TimerHandle | None = None
        self.starting = False  # a `begin` task is on its way
        self.tasks: set[asyncio.Task[None]] = set()
        # Callers whose result came and whose request still runs (sending its response):
        # the replica counts them as ongoing, but they are not on their way here.
        self.served: set[asyncio.Task[Any]] = set()
        self.sizes: deque[int] = deque(maxlen=100)  # recent batch sizes, for `status()`

    # -- the caller's side -------------------------------------------------------------

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Item:
        if len(args) != 1 or kwargs:
            raise TypeError(
                f"{self.name} is batched: call it with one item, and it receives the list "
                f"of a batch's items (it was called with {len(args)} positional and "
                f"{len(kwargs)} keyword arguments)"
            )
        if isinstance(args[0], list):
            raise TypeError(
                f"{self.name} is batched: call it with one item, not a list; it receives "
                "the list of a batch's items itself (wrap an item that is a list in a tuple)"
            )
        item = Item(args[0], current_model_id.get(), self.streaming)
        if item.task in self.served:  # on its way again (a handler calling twice)
            self.served.discard(item.task)
            item.task.remove_done_callback(self.served.discard)
        self.waiting.append(item)
        if not self.starting:  # runs after the calls that arrive in this same loop pass
            self.starting = True
            self.track(asyncio.get_running_loop().create_task(self.begin()))
        return item

    async def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        item = self.add(args, kwargs)
        try:
            return await item.future
        except asyncio.CancelledError:
            self.leave(item)  # still waiting: never runs; running: its result is dropped
            raise

    async def stream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        item = self.add(args, kwargs)
        queue = item.stream
        assert queue is not None
        try:
            while True:
                value = await queue.get()
                if value is END:
                    return
                if isinstance(value, BaseException):
                    raise value
                yield value
        finally:
            self.leave(item)

    def leave(self, item: Item) -> None:
        item.done = True
        if item in self.waiting:
            self.waiting.remove(item)

    # -- forming batches ---------------------------------------------------------------

    def nobody_coming(self) -> bool:
        """Every call the replica runs is already here, or got its result and is only
        finishing: waiting would add latency, not items."""
        runtime = context.current_runtime()
        if runtime is None:
            return False
        return runtime.ongoing - len(self.served) <= len(self.waiting) + self.in_batches

    def schedule(self) -> None:
        """Start what batches may start now; otherwise wake up when the window ends."""
        while (batch := self.claim()) is not None:
            self.start(batch)

    async def begin(self) -> None:
        """The first turn after calls arrived: the batch that may start runs in this task
        (one loop turn fewer than handing it to a new one), the others in their own."""
        self.starting = False
        batch = self.claim()
        if batch is not None:
            if self.waiting and self.running < self.options.max_concurrent_batches:
                self.schedule()
            current_model_id.set(batch[0].model_id)  # this task's own context
            await self.run(batch)

    def claim(self) -> list[Item] | None:
        """The next batch that may start now, taken off the queue and counted as running;
        None, with the timer set for the window's end if one is forming."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        options = self.options
        if not self.waiting or self.running >= options.max_concurrent_batches:
            return None
        loop = asyncio.get_running_loop()
        batch, full, head = self.take_batch()
        waited = loop.time() - batch[0].arrived
        if not (full or waited >= options.batch_wait_timeout_s or self.nobody_coming()):
            wait = options.batch_wait_timeout_s - waited
            self.timer = loop.call_later(max(wait, 0), self.schedule)
            return None
        if head:
            for _ in batch:
                self.waiting.popleft()
        else:
            for item in batch:
                self.waiting.remove(item)
        self.running += 1
        self.in_batches += len(batch)
        self.sizes.append(len(batch))
        metrics.record(metrics.BATCH_SIZE, len(batch), self.name)
        return batch

    def take_batch(self) -> tuple[list[Item], bool, bool]:
        """The oldest item and those after it of the same model, up to the size limit;
        whether that is full, and whether it is the head of the queue (nothing skipped)."""
        limit = self.options.max_batch_size
        size_fn = self.options.batch_size_fn
        model_id = self.waiting[0].model_id
        batch: list[Item] = []
        head = True
        for item in self.waiting:
            if item.model_id != model_id:
                head = False
                continue
            if size_fn is None:
                batch.append(item)
                if len(batch) >= limit:
                    return batch, True, head
                continue
            size = size_fn([each.value for each in (*batch, item)])  # sized by cost
            if batch and size > limit:
                return batch, True, head
            batch.append(item)
            if size >= limit:
                return batch, True, head
        return batch, False, head

    # -- running them ------------------------------------------------------------------

    def start(self, batch: list[Item]) -> None:
        token = current_model_id.set(batch[0].model_id)  # the batch's model, for its code
        try:
            self.track(asyncio.get_running_loop().create_task(self.run(batch)))
        finally:
            current_model_id.reset(token)

    def track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, batch: list[Item]) -> None:
        values = [item.value for item in batch]
        args = (values,) if self.owner is None else (self.owner, values)
        try:
            if self.streaming:
                await self.run_stream(batch, args)
            else:
                if self.sync:
                    results = await replica.run_in_thread(self.fn, *args)
                else:
                    results = await self.fn(*args)
                self.deliver(batch, results)
        except Exception as exc:  # every caller of the batch gets the batch's error
            for item in batch:
                if self.streaming:
                    item.send(exc)
                elif not item.future.done():
                    item.future.set_exception(exc)
        except asyncio.CancelledError:  # the replica is stopping: so are its callers
            for item in batch:
                item.future.cancel()
                item.send(asyncio.CancelledError())
            raise
        finally:
            self.running -= 1
            self.in_batches -= len(batch)
            for item in batch:
                self.mark_served(item.task)
            if self.waiting:
                self.schedule()

    def mark_served(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None and task not in self.served and not task.done():
            self.served.add(task)
            task.add_done_callback(self.served.discard)

    def deliver(self, batch: list[Item], results: Any) -> None:
        if not isinstance(results, list | tuple) or len(results) != len(batch):
            got = len(results) if isinstance(results, list | tuple) else type(results).__name__
            raise TypeError(
                f"{self.name} was given a batch of {len(batch)} items and returned {got}; "
                "a batched method returns a list with one result per item, in order"
            )
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def run_stream(self, batch: list[Item], args: tuple[Any, ...]) -> None:
        generator = self.fn(*args)
        try:
            async for step in generator:
                if not isinstance(step, list | tuple) or len(step) != len(batch):
                    self.deliver(batch, step)  # raises, naming both lengths
                for item, value in zip(batch, step, strict=True):
                    if value is StopIteration or isinstance(value, StopIteration):
                        item.send(END)
                        item.done = True
                    else:
                        item.send(value)
                if all(item.done for item in batch):
                    break  # every caller left or ended: stop computing
        finally:
            await generator.aclose()
        for item in batch:
            item.send(END)


class BatchQueue:
    """A batched method of one object (or a batched plain function): call it with one
    item and await its result."""

    def __init__(self, fn: Callable[..., Any], owner: Any, options: Options) -> None:
        self.fn = fn
        self.owner = owner
        self.options = options
        self.batchers: dict[asyncio.AbstractEventLoop, Batcher] = {}  # one per loop
        # The settings are the decorator's, shared by every object's queue.
        self.set_max_batch_size = options.set_max_batch_size
        self.set_batch_wait_timeout_s = options.set_batch_wait_timeout_s
        functools.update_wrapper(self, fn)

    def batcher(self) -> Batcher:
        loop = asyncio.get_running_loop()
        found = self.batchers.get(loop)
        if found is None:
            found = self.batchers[loop] = Batcher(self.fn, self.owner, self.options)
        return found

    def report(self) -> dict[str, Any]:
        """Its queue as `status()` shows it: waiting items, running batches, recent sizes."""
        sizes = [size for batcher in self.batchers.values() for size in batcher.sizes]
        return {
            "queued": sum(len(batcher.waiting) for batcher in self.batchers.values()),
            "running_batches": sum(batcher.running for batcher in self.batchers.values()),
            "mean_batch_size": round(sum(sizes) / len(sizes), 2) if sizes else None,
            "max_batch_size": self.options.max_batch_size,
        }

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.batcher().call(args, kwargs)


class StreamBatchQueue(BatchQueue):
    """A batched async generator: each caller iterates its own stream."""

    async def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        async for value in self.batcher().stream(args, kwargs):
            yield value


def queue_for(fn: Callable[..., Any], owner: Any, *, options: Options) -> BatchQueue:
    kind = StreamBatchQueue if inspect.isasyncgenfunction(fn) else BatchQueue
    return kind(fn, owner, options)


class BatchedMethod(functools.cached_property[BatchQueue]):
    """What `@asgiserve.batch` puts on a class: each object gets its own queue, cached in
    its `__dict__`, so later lookups skip this descriptor."""

    def __init__(self, fn: Callable[..., Any], options: Options) -> None:
        super().__init__(functools.partial(queue_for, fn, options=options))
        self.fn = fn
        self.options = options
        self.set_max_batch_size = options.set_max_batch_size
        self.set_batch_wait_timeout_s = options.set_batch_wait_timeout_s
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]


def check_signature(fn: Callable[..., Any]) -> bool:
    """Whether `fn` is a method (its first parameter is `self`); raises unless it takes
    exactly one other argument, the batch."""
    if not callable(fn):
        raise TypeError(f"@asgiserve.batch decorates a function or method, not {fn!r}")
    parameters = list(inspect.signature(fn).parameters.values())
    method = bool(parameters) and parameters[0].name == "self"
    if method:
        parameters = parameters[1:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) != 1 or parameters[0].kind not in positional:
        names = ", ".join(p.name for p in parameters) or "nothing"
        raise TypeError(
            f"@asgiserve.batch needs a function that takes one argument besides self, the "
            f"list of a batch's items; {fn.__qualname__} takes {names}"
        )
    return method


def batch(
    _fn: Callable[..., Any] | None = None,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    batch_size_fn: Callable[[list[Any]], int] | None = None,
) -> Any:
    """Batch a replica method (or function) that takes a list and returns a list of the
    same length; each caller passes one item and gets its own result back."""
    options = Options(max_batch_size, batch_wait_timeout_s, max_concurrent_batches, batch_size_fn)

    def decorate(fn: Callable[..., Any]) -> Any:
        if check_signature(fn):
            return BatchedMethod(fn, options)
        return queue_for(fn, None, options=options)  # a plain function: one queue

    return decorate(_fn) if _fn is not None else decorate


def report(instance: Any) -> dict[str, Any] | None:
    """The batch queues of a replica object, by method name, or None if it has none."""
    if isinstance(instance, BatchQueue):
        return {"batching": {"__call__": instance.report()}}
    queues = {
        name: value.report()
        for name, value in getattr(instance, "__dict__", {}).items()
        if isinstance(value, BatchQueue)
    }
    return {"batching": queues} if queues else None
