"""What a client is told when its request fails: a status and a reason to act on.

Nothing internal goes out (other applications, replica ids, process ids); the server's
log has the detail.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp

from asgiserve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
    RequestCancelledError,
    RequestTimeoutError,
)
from asgiserve.responses import error_response
from asgiserve.watch import BodyTimeout, BodyTooLarge

logger = logging.getLogger("asgiserve")

# Failures the client can retry, with the reason it is given.
UNAVAILABLE = {
    BackPressureError: "the server is busy: too many requests are queued "
    "(max_queued_requests); try again after the Retry-After delay",
    ReplicaDiedError: "the replica serving this request died before answering; try again",
    DeploymentUnavailableError: "this application is not available right now; try again later",
    RequestCancelledError: "the request was cancelled before it finished; try again",
}


def server_error(exc: Exception) -> bool:
    """An error of the application's own (a 500), not one asgiserve answers for it."""
    known = (RequestTimeoutError, BodyTooLarge, BodyTimeout, *UNAVAILABLE)
    return not isinstance(exc, known)


def failure_response(exc: Exception, request_id: str, app_name: str, debug: bool) -> ASGIApp:
    """The response to a request that failed, logged; a 500's traceback only in debug."""
    if isinstance(exc, RequestTimeoutError):
        return error_response(504, str(exc), request_id)
    if isinstance(exc, BodyTooLarge):
        return error_response(413, str(exc), request_id)
    if isinstance(exc, BodyTimeout):
        return error_response(408, str(exc), request_id)
    for kind, reason in UNAVAILABLE.items():
        if isinstance(exc, kind):
            logger.warning("request %s to application %r: %s", request_id, app_name, exc)
            response = error_response(503, reason, request_id)
            response.headers["retry-after"] = "1"
            return response
    logger.error("request %s to application %r raised", request_id, app_name, exc_info=exc)
    extra: dict[str, Any] = {}
    if debug:
        import traceback

        extra["traceback"] = traceback.format_exception(exc)
    return error_response(500, "Internal Server Error", request_id, **extra)
