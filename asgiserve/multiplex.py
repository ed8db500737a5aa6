"""Model multiplexing: many models behind one deployment, a few loaded per replica.

`@asgiserve.multiplexed` wraps an async loader `get_model(self, model_id)`: each replica
object caches up to `max_num_models_per_replica` models, evicting the least recently used
(its `aclose()` or `unload()` runs, or its last reference goes), and concurrent first
calls for one model share one load. A request names its model with the HTTP header
`serve_multiplexed_model_id` or `handle.options(multiplexed_model_id=...)`; the scheduler
sends it to a replica it last sent that model to when one has room (`Placement`), so
replicas keep the models they have.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from asgiserve import metrics

logger = logging.getLogger("asgiserve")

HEADERS = (b"serve_multiplexed_model_id", b"ray_serve_multiplexed_model_id")

current_model_id: ContextVar[str] = ContextVar("asgiserve_model_id", default="")


def get_multiplexed_model_id() -> str:
    """The model id the request being served asked for; "" when it named none."""
    return current_model_id.get()


def model_id_from_headers(headers: list[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key in HEADERS:
            return value.decode("latin-1")
    return ""


class ModelCache:
    """One replica object's loaded models, least recently used first."""

    def __init__(self, loader: Callable[..., Any], owner: Any, limit: int) -> None:
        self.loader = loader
        self.owner = owner
        self.limit = limit
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loading: dict[str, asyncio.Task[Any]] = {}
        self.loads = 0  # loader runs, for `status()` and the benchmark

    async def __call__(self, model_id: str | None = None) -> Any:
        if model_id is None:
            model_id = current_model_id.get()
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        pending = self.loading.get(model_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self.load(model_id))
            self.loading[model_id] = pending
        return await asyncio.shield(pending)  # a caller that leaves leaves the load to others

    async def load(self, model_id: str) -> Any:
        started = time.perf_counter()
        try:
            model = await self.loader(self.owner, model_id)
        finally:
            del self.loading[model_id]
        self.loads += 1
        metrics.record(metrics.MODEL_LOAD_LATENCY, (time.perf_counter() - started) * 1000)
        metrics.record(metrics.MODEL_LOADS, 1)
        self.models[model_id] = model
        while len(self.models) > self.limit:
            _, evicted = self.models.popitem(last=False)
            await unload(evicted)
        metrics.record(metrics.MODELS_LOADED, len(self.models))
        return model


async def unload(model: Any) -> None:
    """Release an evicted model: `aclose()` or `unload()` if it has one."""
    release = getattr(model, "aclose", None) or getattr(model, "unload", None)
    if release is None:
        return  # dropping the last reference runs its __del__
    try:
        result = release()
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("unloading an evicted model failed")


class MultiplexedLoader(functools.cached_property[ModelCache]):
    """What `@asgiserve.multiplexed` puts on the class: each object gets its own cache,
    cached in its `__dict__`."""

    def __init__(self, loader: Callable[..., Any], limit: int) -> None:
        if not inspect.iscoroutinefunction(loader):
            raise TypeError(
                f"@asgiserve.multiplexed needs an async loader (async def {loader.__name__}"
                "(self, model_id)), got a plain function"
            )
        parameters = list(inspect.signature(loader).parameters)
        if len(parameters) != 2:
            raise TypeError(
                f"@asgiserve.multiplexed needs a loader method (self, model_id); "
                f"{loader.__qualname__} takes ({', '.join(parameters)})"
            )
        super().__init__(lambda instance: ModelCache(loader, instance, limit))
        self.limit = limit


def multiplexed(
    _fn: Callable[..., Any] | None = None, *, max_num_models_per_replica: int = 3
) -> Any:
    """Cache the models an async loader method returns, per replica (see the module)."""
    if not isinstance(max_num_models_per_replica, int) or max_num_models_per_replica < 1:
        raise ValueError(
            "max_num_models_per_replica must be an int of at least 1, "
            f"got {max_num_models_per_replica!r}"
        )

    def decorate(loader: Callable[..., Any]) -> MultiplexedLoader:
        return MultiplexedLoader(loader, max_num_models_per_replica)

    return decorate(_fn) if _fn is not None else decorate


def models_per_replica(target: Any) -> int:
    """The deployment's model limit, or 0 when it multiplexes nothing."""
    if not inspect.isclass(target):
        return 0
    limits = [
        value.limit
        for cls in target.__mro__
        for value in vars(cls).values()
        if isinstance(value, MultiplexedLoader)
    ]
    return min(limits, default=0)


class Placement:
    """Which models the scheduler last sent to a replica: a mirror of its cache."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.models: OrderedDict[str, None] = OrderedDict()

    def holds(self, model_id: str) -> bool:
        return model_id in self.models

    def full(self) -> bool:
        return len(self.models) >= self.limit

    def sent(self, model_id: str) -> None:
        self.models[model_id] = None
        self.models.move_to_end(model_id)
        while len(self.models) > self.limit:
            self.models.popitem(last=False)
