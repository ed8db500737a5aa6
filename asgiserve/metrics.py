"""Metrics: what asgiserve counts, and the counters, gauges and histograms users add.

Observations go into a `Recorder`: plain objects, cheap on the request path and cheap to
copy. The server has one for itself (HTTP requests, handle calls made outside replicas);
each replica has its own, on every backend, which `GET /-/metrics` asks for when it is
scraped (`asgiserve.metrics_page`). prometheus_client is used only there, to write the
page, so importing asgiserve does not import it.

User metrics follow prometheus_client's names and label behaviour (`labels(...)`, `inc`,
`set`, `observe`; a counter's name gets `_total`), and Ray Serve's `tags=` as well; inside
a replica they get its application, deployment and replica as labels.
"""

from __future__ import annotations

import bisect
import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from asgiserve import context

Kind = Literal["counter", "gauge", "histogram"]

# Milliseconds from a 100 µs noop to a minute-long model call.
LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
                      1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0)  # fmt: skip
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # as Prometheus'
ENABLED_ENV = "ASGISERVE_METRICS"  # "0" turns recording off (the page then shows no samples)
REPLICA_LABELS = ("application", "deployment", "replica")
FOLD_AT = 256  # observations a histogram series keeps before it counts them in its buckets


@dataclass(frozen=True)
class Family:
    """A metric's name, type, help, label names and (for a histogram) bucket bounds."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


def family(
    name: str, kind: Kind, help: str, labels: Sequence[str], buckets: Sequence[float] = ()
) -> Family:
    return Family(name, kind, help, tuple(labels), tuple(buckets))


APP = ("application",)
DEPLOYMENT = ("application", "deployment")
HTTP_REQUESTS = family(
    "asgiserve_num_http_requests", "counter", "HTTP requests answered, by status code",
    ("application", "route", "method", "status_code"),
)  # fmt: skip
HTTP_LATENCY = family(
    "asgiserve_http_request_latency_ms", "histogram", "Time to answer an HTTP request, in ms",
    ("application", "route", "method", "status_code"), LATENCY_BUCKETS_MS,
)  # fmt: skip
ONGOING_HTTP = family(
    "asgiserve_num_ongoing_http_requests", "gauge", "HTTP requests being answered now", APP
)
QUEUED = family(
    "asgiserve_deployment_queued_queries", "gauge",
    "Requests waiting for a replica of the deployment", DEPLOYMENT,
)  # fmt: skip
REPLICAS = family(
    "asgiserve_num_replicas", "gauge", "Replicas of the deployment, by state",
    (*DEPLOYMENT, "state"),
)  # fmt: skip
HANDLE_REQUESTS = family(
    "asgiserve_handle_requests", "counter", "Calls made through deployment handles",
    (*DEPLOYMENT, "method"),
)  # fmt: skip
PROCESSING_LATENCY = family(
    "asgiserve_deployment_processing_latency_ms", "histogram",
    "Time a replica spent on a request, in ms", REPLICA_LABELS, LATENCY_BUCKETS_MS,
)  # fmt: skip
REPLICA_REQUESTS = family(
    "asgiserve_deployment_request_counter", "counter", "Requests a replica finished",
    REPLICA_LABELS,
)  # fmt: skip
REPLICA_ERRORS = family(
    "asgiserve_deployment_error_counter", "counter", "Requests a replica's code raised on",
    REPLICA_LABELS,
)  # fmt: skip
BATCH_SIZE = family(
    "asgiserve_batch_size", "histogram", "Calls in each batch a @batch method ran",
    (*REPLICA_LABELS, "method"), BATCH_BUCKETS,
)  # fmt: skip
MODEL_LOADS = family(
    "asgiserve_multiplexed_models_load_counter", "counter",
    "Multiplexed models loaded", REPLICA_LABELS,
)  # fmt: skip
MODEL_LOAD_LATENCY = family(
    "asgiserve_multiplexed_model_load_latency_ms", "histogram",
    "Time to load a multiplexed model, in ms", REPLICA_LABELS, LATENCY_BUCKETS_MS,
)  # fmt: skip
MODELS_LOADED = family(
    "asgiserve_num_multiplexed_models", "gauge", "Multiplexed models loaded now", REPLICA_LABELS
)


# Counters that are a histogram's count: recorded once, in the histogram, on the hot path.
COUNTED_BY = {HTTP_LATENCY.name: HTTP_REQUESTS, PROCESSING_LATENCY.name: REPLICA_REQUESTS}


class Value:
    """A counter's or a gauge's one number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def data(self) -> float:
        return self.value


class Buckets:
    """A histogram's counts per bucket (not cumulative; the last is +Inf) and sum.

    The router and the replicas append the durations they measure to `pending` (never NaN),
    which is counted into the buckets when the page is read or `FOLD_AT` wait: a bucket
    search per request cost more than the rest of a noop request's metrics, and sorting
    the lot first costs a third of that. Counts and sum (added in arrival order) come out
    the same.
    """

    __slots__ = ("bounds", "counts", "sum", "pending")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.pending: list[float] = []

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def fold(self) -> None:
        """Count what is pending; only what is read here is removed, as other threads may
        append meanwhile."""
        pending = self.pending
        taken = len(pending)
        if not taken:
            return
        values = pending[:taken]
        del pending[:taken]
        total = self.sum
        for value in values:  # one by one, as `observe` adds them: the same float sum
            total += value
        self.sum = total
        values.sort()
        counts, below = self.counts, 0
        for index, bound in enumerate(self.bounds):  # the values up to each bound
            at = bisect.bisect_right(values, bound, below)
            counts[index] += at - below
            below = at
            if below == taken:
                return
        counts[-1] += taken - below

    def data(self) -> tuple[tuple[int, ...], float]:
        self.fold()
        return tuple(self.counts), self.sum


Series = Value | Buckets
# What a recorder holds, as plain data for the wire: families, and (name, labels, data).
Snapshot = tuple[dict[str, Family], list[tuple[str, tuple[str, ...], Any]]]


class Recorder:
    """The samples of one process or one replica."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.series: dict[tuple[str, tuple[str, ...]], Series] = {}

    def get(self, metric: Family, labels: tuple[str, ...]) -> Any:
        """The series for these label values, made on first use; keep it for the hot path."""
        key = (metric.name, labels)
        found = self.series.get(key)
        if found is None:
            self.families.setdefault(metric.name, metric)
            found = Buckets(metric.buckets) if metric.kind == "histogram" else Value()
            self.series[key] = found
        return found

    def snapshot(self) -> Snapshot:
        families = dict(self.families)
        series = [(k[0], k[1], s.data()) for k, s in list(self.series.items())]
        for (name, labels), found in list(self.series.items()):  # counts kept once, as
            counted = COUNTED_BY.get(name)  # a histogram's, are also counters of their own
            if counted is not None and isinstance(found, Buckets):
                families[counted.name] = counted  # folded by `data` above
                series.append((counted.name, labels, float(sum(found.counts))))
        return families, series


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0"


process = Recorder()  # the server's own, and user metrics observed outside replicas


def recorder() -> tuple[Recorder, tuple[str, ...]]:
    """Where an observation made now goes, and the replica labels to add to it."""
    runtime = context.current_runtime()
    found = getattr(runtime, "recorder", None)
    if found is None:
        return process, ("", "", "")
    spec = runtime.spec  # type: ignore[union-attr]
    return found, (spec.app_name, spec.deployment_name, spec.replica_id)


def record(metric: Family, value: float, *labels: str) -> None:
    """One of asgiserve's own observations where it happens (a handle call, a batch, a
    model load): into the replica's recorder inside one, else the server's. A counter
    goes up by `value`, a gauge is set to it, a histogram observes it."""
    if not enabled():
        return
    found, where = recorder()
    series = found.get(metric, (where + labels) if metric.labels[:3] == REPLICA_LABELS else labels)
    if metric.kind == "counter":
        series.inc(value)
    elif metric.kind == "gauge":
        series.set(value)
    else:
        series.observe(value)


# -- user metrics ----------------------------------------------------------------------


class Metric:
    """A user metric; `labels(...)` or `tags=` pick the series, as in prometheus_client
    or `ray.serve.metrics`."""

    kind: Kind = "counter"

    def __init__(
        self,
        name: str,
        documentation: str = "",
        labelnames: Iterable[str] = (),
        *,
        description: str = "",
        tag_keys: Iterable[str] | None = None,
        buckets: Sequence[float] | None = None,
        boundaries: Sequence[float] | None = None,
    ) -> None:
        names = tuple(tag_keys if tag_keys is not None else labelnames)
        taken = [label for label in names if label in REPLICA_LABELS]
        if taken:
            raise ValueError(f"metric {name!r}: label {taken[0]!r} is added by asgiserve")
        bounds = tuple(sorted(boundaries or buckets or DEFAULT_BUCKETS))
        self.family = family(
            name, self.kind, documentation or description or name, (*REPLICA_LABELS, *names),
            bounds if self.kind == "histogram" else (),
        )  # fmt: skip
        self.names = names
        self.defaults: dict[str, str] = {}
        self.values: tuple[str, ...] | None = None if names else ()

    def set_default_tags(self, tags: dict[str, str]) -> None:
        """Ray Serve's: values for labels a call does not give."""
        self.defaults = {key: str(value) for key, value in tags.items()}

    def labels(self, *values: Any, **named: Any) -> Metric:
        """The child for these label values, as prometheus_client's."""
        child = copy.copy(self)
        child.values = self.label_values(values, named)
        return child

    def label_values(self, values: Sequence[Any], named: dict[str, Any]) -> tuple[str, ...]:
        if values and named:
            raise ValueError("give label values by position or by name, not both")
        if values:
            if len(values) != len(self.names):
                raise ValueError(f"metric {self.family.name!r} takes labels {self.names}")
            return tuple(str(value) for value in values)
        given = {**self.defaults, **{key: str(value) for key, value in named.items()}}
        if set(given) - set(self.names) or len(given) < len(self.names):
            raise ValueError(
                f"metric {self.family.name!r} takes labels {self.names}, got {tuple(given)}"
            )
        return tuple(given[name] for name in self.names)

    def series(self, tags: dict[str, Any] | None) -> Any:
        if tags is not None or self.values is None:
            values = self.label_values((), tags or {})
        else:
            values = self.values
        found, where = recorder()
        return found.get(self.family, where + values)


class Counter(Metric):
    kind: Kind = "counter"

    def inc(self, value: float = 1.0, tags: dict[str, Any] | None = None) -> None:
        if value < 0:
            raise ValueError("a counter can only go up")
        if enabled():
            self.series(tags).inc(value)


class Gauge(Metric):
    kind: Kind = "gauge"

    def set(self, value: float, tags: dict[str, Any] | None = None) -> None:
        if enabled():
            self.series(tags).set(value)

    def inc(self, value: float = 1.0, tags: dict[str, Any] | None = None) -> None:
        if enabled():
            self.series(tags).inc(value)

    def dec(self, value: float = 1.0, tags: dict[str, Any] | None = None) -> None:
        if enabled():
            self.series(tags).inc(-value)


class Histogram(Metric):
    kind: Kind = "histogram"

    def observe(self, value: float, tags: dict[str, Any] | None = None) -> None:
        if enabled():
            self.series(tags).observe(value)


# -- the router's counts ---------------------------------------------------------------

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "WEBSOCKET"})


class HTTPMeter:
    """The router's counts, one dict lookup per request (made by the router, inline).
    Labels come only from bounded sets (route prefixes, known methods, status codes), so
    no client can grow the page."""

    def __init__(self, into: Recorder = process) -> None:
        self.into = into
        self.answered: dict[tuple[str, str, str, int], Buckets] = {}

    def series(self, app_name: str, route: str, method: str, status: int) -> Buckets:
        """Made on first use; an unknown method is kept under "OTHER" only."""
        if method not in METHODS:
            method = "OTHER"
        key = (app_name, route, method, status)
        found = self.answered.get(key)
        if found is None:
            labels = (app_name, route, method, str(status) if status else "")
            found = self.answered[key] = self.into.get(HTTP_LATENCY, labels)
        return found
