"""Request tracing: a W3C `traceparent` carried from the HTTP request into every replica.

The router reads the request's `traceparent`; with OpenTelemetry's API installed and a
tracer provider set (`asgiserve[otel]` and the user's SDK setup), it also opens the
server-side span, a child of the request's. Each call then carries the traceparent of the
span it belongs to (`Call.trace`), on every backend, and the replica makes it the current
context while user code runs, so a span opened there is that span's child; a handle call
made from there carries the replica's current span on. Without OpenTelemetry nothing is
imported and the header is passed on as it came.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

# version-traceid-parentid-flags, as W3C Trace Context writes it; anything else is dropped.
TRACEPARENT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
TRACER_NAME = "asgiserve"


api: ModuleType | None = None  # OpenTelemetry's trace API, once `otel` has found it
looked = False


def otel() -> ModuleType | None:
    """OpenTelemetry's trace API, if installed (imported on first use: it is not light)."""
    global api, looked
    if not looked:
        looked = True
        try:
            from opentelemetry import trace
        except ImportError:
            return None
        trace.get_tracer_provider()  # sets up one named by OTEL_PYTHON_TRACER_PROVIDER, if any
        api = trace
    return api


def recording() -> bool:
    """Whether spans made now go anywhere: the API is installed and a provider is set.

    Asked on every request, so it reads the API's own global, which `set_tracer_provider`
    sets once: `get_tracer_provider()` costs about a microsecond, more than a noop
    request's share.
    """
    trace = api if looked else otel()
    if trace is None:
        return False
    try:  # an attribute, not `getattr(..., default)`: no call while it exists
        provider = trace._TRACER_PROVIDER
    except AttributeError:  # an API without it
        provider = trace.get_tracer_provider()
    if provider is None:
        return False
    return not isinstance(provider, trace.NoOpTracerProvider | trace.ProxyTracerProvider)


def carrier(traceparent: str) -> dict[str, str]:
    return {"traceparent": traceparent} if traceparent else {}


@contextmanager
def server_span(name: str, traceparent: str, attributes: dict[str, Any]) -> Iterator[Any]:
    """The router's span for one request, a child of `traceparent` (or a new trace)."""
    from opentelemetry import propagate, trace

    parent = propagate.extract(carrier(traceparent))
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def current() -> str:
    """The traceparent of the span current here, for a call made now; "" if none."""
    trace = otel()
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return ""
    from opentelemetry import propagate

    found: dict[str, str] = {}
    propagate.inject(found)
    return found.get("traceparent", "")


def enter(traceparent: str) -> object | None:
    """Make the call's span the current context of this task; returns what `leave` needs."""
    if otel() is None:
        return None
    from opentelemetry import context, propagate

    return context.attach(propagate.extract(carrier(traceparent)))


def leave(token: object | None) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token)  # type: ignore[arg-type]
