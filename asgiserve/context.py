"""What a handler can learn about the request it is serving."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from asgiserve.backends.base import ReplicaSpec


class Serving(Protocol):
    """The replica runtime as a request sees it."""

    spec: ReplicaSpec
    ongoing: int  # calls it runs now


@dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    app_name: str = ""
    deployment: str = ""
    replica_id: str = ""
    route: str = ""


# The replica sets the request's id and route and its own spec; the context is built only
# when asked for, which keeps the per-request cost to one tuple. Nothing of the request
# itself goes in: servers arm their keep-alive timer while sending a response, in a copy
# of this context that lives until the connection's next request, and each request's
# scope and call held there outlived it and kept the garbage collector busy.
current: ContextVar[tuple[str, str, Serving] | None] = ContextVar(
    "asgiserve_request", default=None
)


def get_request_context() -> RequestContext:
    """The request being served by this task: id, application, deployment, replica, route.

    Outside a replica every field is empty.
    """
    served = current.get()
    if served is None:
        return RequestContext()
    request_id, route, runtime = served
    spec = runtime.spec
    return RequestContext(request_id, spec.app_name, spec.deployment_name, spec.replica_id, route)


def current_runtime() -> Serving | None:
    """The replica serving this task's request (batching asks how busy it is)."""
    served = current.get()
    return None if served is None else served[2]


def new_request_id() -> str:
    """32 hex digits: a random prefix per process and a counter (cheaper than uuid4)."""
    return next(request_ids)


def numbered_ids() -> Iterator[str]:
    """32 hex digits each: a new random prefix and a count. Each id is made by the
    iterator itself: `next(ids)` is one call, where a Python function and its three calls
    cost ~1% of a request. Renew it after a fork, or parent and child make the same ids."""
    return map((os.urandom(8).hex() + "{:016x}").format, itertools.count())


def fresh_prefix() -> None:
    global request_ids
    request_ids = numbered_ids()


request_ids: Iterator[str] = iter(())
fresh_prefix()
os.register_at_fork(after_in_child=fresh_prefix)
