"""What a handler can learn about the request it is serving."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    app_name: str = ""
    deployment: str = ""
    replica_id: str = ""
    route: str = ""


NONE = RequestContext()
current: ContextVar[RequestContext] = ContextVar("asgiserve_request", default=NONE)  # noqa: B039


def get_request_context() -> RequestContext:
    """The request being served by this task: id, application, deployment, replica, route.

    Outside a replica every field is empty.
    """
    return current.get()
