"""Errors a caller of asgiserve can catch, each mapped to one HTTP status by the router."""

from __future__ import annotations


class AsgiserveError(Exception):
    """Base class, so callers can catch everything asgiserve raises in one clause."""


class RequestCancelledError(AsgiserveError):
    """The request was cancelled (client disconnect, timeout or `cancel()`) before it finished."""


class BackPressureError(AsgiserveError):
    """Every replica is at `max_ongoing_requests` and the queue is at `max_queued_requests`."""

    status_code = 503


class ReplicaDiedError(AsgiserveError):
    """The replica running the request died before answering it.

    `sent` is False when the request never reached it, so it can safely go elsewhere.
    """

    status_code = 503

    def __init__(self, message: str = "", *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class DeploymentUnavailableError(AsgiserveError):
    """No application or deployment by that name is running."""

    status_code = 503


class RequestTimeoutError(AsgiserveError):
    """The request ran past the end-to-end timeout."""

    status_code = 504


class ShippingError(AsgiserveError, TypeError):
    """A deployment that a worker can neither import nor receive by value (pickled)."""
