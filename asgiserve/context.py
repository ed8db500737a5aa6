"""What a handler can learn about the request it is serving."""

from __future__ import annotations

import itertools
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgiserve.backends.base import Call, ReplicaSpec


@dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    app_name: str = ""
    deployment: str = ""
    replica_id: str = ""
    route: str = ""


# The replica sets the call and its own spec; the context is built only when asked for,
# which keeps the per-request cost to one tuple.
current: ContextVar[tuple[Call, ReplicaSpec] | None] = ContextVar("asgiserve_request", default=None)


def get_request_context() -> RequestContext:
    """The request being served by this task: id, application, deployment, replica, route.

    Outside a replica every field is empty.
    """
    served = current.get()
    if served is None:
        return RequestContext()
    call, spec = served
    return RequestContext(
        call.request_id, spec.app_name, spec.deployment_name, spec.replica_id, call.route
    )


def new_request_id() -> str:
    """32 hex digits: a random prefix per process and a counter (cheaper than uuid4)."""
    return process_prefix + format(next(request_counter), "016x")


def fresh_prefix() -> None:
    global process_prefix, request_counter
    process_prefix = os.urandom(8).hex()
    request_counter = itertools.count()


process_prefix = ""
request_counter = itertools.count()
fresh_prefix()
os.register_at_fork(after_in_child=fresh_prefix)
