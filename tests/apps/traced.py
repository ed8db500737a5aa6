"""A handle chain that opens OpenTelemetry spans, and each process's in-memory exporter."""

from __future__ import annotations

import functools
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.requests import Request

import asgiserve


@functools.cache
def exporter() -> InMemorySpanExporter:
    """This process's spans (the test's, a worker's or an actor's), set up once; added to
    the provider already set, if any (a process gets one: docs/monitoring.md sets one)."""
    found = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(found))
    return found


def finished() -> list[dict[str, Any]]:
    """The spans this process finished, as plain data that travels back to the test."""
    spans = []
    for span in exporter().get_finished_spans():
        context = span.get_span_context()
        assert context is not None
        spans.append({
            "name": span.name,
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        })  # fmt: skip
    return spans


@asgiserve.deployment
class Inner:
    def __init__(self) -> None:
        exporter()

    def work(self) -> str:
        with trace.get_tracer("tests").start_as_current_span("inner-work"):
            return "inner"

    def spans(self) -> list[dict[str, Any]]:
        return finished()


@asgiserve.deployment
class Outer:
    def __init__(self, inner: Any) -> None:
        exporter()
        self.inner = inner

    async def __call__(self, request: Request) -> str:
        with trace.get_tracer("tests").start_as_current_span("outer-work"):
            return str(await self.inner.work.remote())

    def spans(self) -> list[dict[str, Any]]:
        return finished()


app = Outer.bind(Inner.bind())
