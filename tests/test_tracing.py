"""Tracing on every backend: a request's `traceparent` reaches spans opened in replicas,
through the router's server span and a handle chain."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

import asgiserve
from asgiserve import tracing
from tests.apps import traced
from tests.test_faults import eventually


def server_span(name: str) -> dict[str, Any]:
    """The router's span, which ends just after the response has gone out."""
    eventually(lambda: any(span["name"] == name for span in traced.finished()), name)
    return by_name(traced.finished(), name)


def by_name(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, (name, spans)
    return found[0]


def test_spans_in_replicas_belong_to_the_request(http: httpx.Client, backend: str) -> None:
    ours = traced.exporter()  # the router's spans, and in-process replicas' too
    ours.clear()
    handle = asgiserve.run(traced.app, name="traced", route_prefix="/traced")
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    response = http.get("/traced", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert response.status_code == 200 and response.text == "inner"

    server_span("GET /traced")
    spans = [*traced.finished(), *handle.spans.remote().result()]
    spans += asgiserve.get_deployment_handle("Inner", "traced").spans.remote().result()
    spans = list({span["span_id"]: span for span in spans}.values())  # in-process: one list
    server = by_name(spans, "GET /traced")
    outer = by_name(spans, "outer-work")
    inner_span = by_name(spans, "inner-work")
    assert {server["trace_id"], outer["trace_id"], inner_span["trace_id"]} == {trace_id}
    assert server["parent_id"] == parent_id  # the client's span
    assert outer["parent_id"] == server["span_id"]  # through the router into the replica
    assert inner_span["parent_id"] == outer["span_id"]  # through the handle call


def test_a_request_without_traceparent_starts_a_trace(http: httpx.Client, backend: str) -> None:
    ours = traced.exporter()
    ours.clear()
    asgiserve.run(traced.app, name="traced", route_prefix="/traced")
    assert http.get("/traced").status_code == 200
    server = server_span("GET /traced")
    assert server["parent_id"] is None and int(server["trace_id"], 16) != 0


def test_a_malformed_traceparent_is_ignored(http: httpx.Client, backend: str) -> None:
    traced.exporter().clear()
    asgiserve.run(traced.app, name="traced", route_prefix="/traced")
    response = http.get("/traced", headers={"traceparent": "00-nothex-bad-01"})
    assert response.status_code == 200
    server = server_span("GET /traced")
    assert server["parent_id"] is None
    assert tracing.TRACEPARENT.fullmatch(b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")
