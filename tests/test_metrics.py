"""`GET /-/metrics` on every backend: the router's counts, each replica's samples (its
latency, batches, model loads, user metrics) on the one page, a stopped worker, hostile
methods, and `asgiserve run --workers 2`."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import re
import signal
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

import asgiserve
from asgiserve import metrics
from asgiserve.router import Router
from tests.test_faults import eventually
from tests.test_hosting import running

runs = itertools.count()
handled = metrics.Counter("test_things_handled", "things handled", tag_keys=("kind",))
sizes = metrics.Histogram("test_thing_size", "thing sizes", boundaries=[1, 10, 100])
last_size = metrics.Gauge("test_last_size", "the last size seen")


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=32)
class Metered:
    @asgiserve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def double(self, items: list[int]) -> list[int]:
        return [2 * item for item in items]

    @asgiserve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return model_id.upper()

    async def __call__(self, request: Request) -> dict[str, Any]:
        size = int(request.query_params.get("size", "5"))
        handled.inc(tags={"kind": "http"})
        sizes.observe(size)
        last_size.set(size)
        return {"double": await self.double(size)}

    async def model(self) -> str:
        handled.inc(tags={"kind": "handle"})
        return str(await self.get_model(asgiserve.get_multiplexed_model_id()))


def scrape(client: httpx.Client | Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The page's samples: (name, sorted labels) -> value."""
    response = client.get("/-/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    return sum(
        value
        for (found, series), value in samples.items()
        if found == name and labels.items() <= dict(series).items()
    )


def test_one_page_holds_the_router_and_every_replica(http: httpx.Client, backend: str) -> None:
    app = f"metered-{backend}-{next(runs)}"  # the server's own counts outlive each test
    handle = asgiserve.run(Metered.bind(), name=app, route_prefix=f"/{app}")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: http.get(f"/{app}", params={"size": x}), range(12)))
    assert all(answer.status_code == 200 for answer in answers)
    for model in ("a", "b", "a"):
        assert handle.model.options(multiplexed_model_id=model).remote().result() == model.upper()
    assert http.get(f"/{app}/nothing-here", params={"size": "x"}).status_code == 500

    samples = scrape(http)
    route = {"application": app, "route": f"/{app}", "method": "GET"}
    assert total(samples, "asgiserve_num_http_requests_total", **route, status_code="200") == 12
    assert total(samples, "asgiserve_num_http_requests_total", **route, status_code="500") == 1
    assert total(samples, "asgiserve_http_request_latency_ms_count", **route) == 13
    assert total(samples, "asgiserve_http_request_latency_ms_bucket", **route, le="+Inf") == 13
    mine = {"application": app, "deployment": "Metered"}
    assert total(samples, "asgiserve_num_replicas", **mine, state="RUNNING") == 2
    assert total(samples, "asgiserve_deployment_queued_queries", **mine) == 0
    # Observed inside the replicas, wherever they run.
    replicas = {dict(labels)["replica"] for (name, labels) in samples
                if name == "asgiserve_deployment_processing_latency_ms_count"
                and dict(labels)["application"] == app}  # fmt: skip
    assert len(replicas) == 2
    assert total(samples, "asgiserve_deployment_processing_latency_ms_count", **mine) == 16
    assert total(samples, "asgiserve_deployment_error_counter_total", **mine) == 1
    assert total(samples, "asgiserve_batch_size_count", **mine) >= 3  # 12 items, 4 at most
    assert total(samples, "asgiserve_batch_size_sum", **mine) == 12
    assert total(samples, "asgiserve_multiplexed_models_load_counter_total", **mine) >= 2
    assert total(samples, "asgiserve_multiplexed_model_load_latency_ms_count", **mine) >= 2
    assert total(samples, "asgiserve_handle_requests_total", application=app, method="model") == 3
    # The user's metrics, with the replica's labels added.
    assert total(samples, "test_things_handled_total", **mine, kind="http") == 12
    assert total(samples, "test_things_handled_total", **mine, kind="handle") == 3
    assert total(samples, "test_thing_size_count", **mine) == 12
    assert total(samples, "test_thing_size_bucket", **mine, le="10.0") == 11  # 0..10
    assert total(samples, "test_thing_size_sum", **mine) == sum(range(12))
    gauges = [value for (name, labels), value in samples.items()
              if name == "test_last_size" and dict(labels)["application"] == app]  # fmt: skip
    assert gauges and all(0 <= value < 12 for value in gauges)


def test_the_page_speaks_openmetrics_when_asked(http: httpx.Client, backend: str) -> None:
    asgiserve.run(Metered.bind(), name=f"open-{backend}", route_prefix=f"/open-{backend}")
    assert http.get(f"/open-{backend}").status_code == 200
    response = http.get("/-/metrics", headers={"accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_user_metrics_check_their_labels() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        handled.inc(tags={"colour": "red"})
    with pytest.raises(ValueError, match="added by asgiserve"):
        metrics.Counter("test_clash", tag_keys=("replica",))
    with pytest.raises(ValueError, match="only go up"):
        handled.labels("x").inc(-1)
    child = handled.labels(kind="direct")
    child.inc(2)  # outside a replica: the server's own recorder, empty replica labels
    samples = parse(asyncio.run(render_page()))
    assert total(samples, "test_things_handled_total", kind="direct", replica="") == 2


def test_pending_durations_count_as_observed_ones() -> None:
    """The durations the router and replicas append, folded at the cap and at a scrape,
    give the same buckets and the same float sum as `observe` one at a time."""
    rng = random.Random(3)
    edges = [0.0, 0.1, 0.25, 60000.0, 1e9, math.inf]
    for _ in range(50):
        one, folded = (metrics.Buckets(metrics.LATENCY_BUCKETS_MS) for _ in range(2))
        for _ in range(rng.randrange(3 * metrics.FOLD_AT)):
            value = rng.choice([rng.uniform(0, 2), rng.expovariate(0.01), rng.choice(edges)])
            one.observe(value)
            folded.pending.append(value)
            if len(folded.pending) >= metrics.FOLD_AT:
                folded.fold()
        assert folded.data() == one.data()
        assert not folded.pending


async def render_page() -> str:
    from asgiserve import metrics_page

    body, _ = await metrics_page.render([], "")
    return body.decode()


@pytest.mark.anyio
async def test_status_routes_off_means_no_metrics_page() -> None:
    router = Router(status_routes=False)
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/-/metrics")).status_code == 404


@pytest.mark.anyio
async def test_made_up_methods_do_not_grow_the_page() -> None:
    @asgiserve.deployment
    def echo() -> str:
        return "ok"

    router = Router()
    asgiserve.run(echo.bind(), name="methods", route_prefix="/methods", router=router)
    transport = httpx.ASGITransport(app=router)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(50):
                await client.request(f"M{i}", "/methods")
            samples = parse((await client.get("/-/metrics")).text)
    finally:
        asgiserve.delete("methods")
    methods = {dict(labels).get("method") for (name, labels) in samples
               if name == "asgiserve_num_http_requests_total"
               and dict(labels).get("application") == "methods"}  # fmt: skip
    assert methods == {"OTHER"}
    assert total(samples, "asgiserve_num_http_requests_total", application="methods") == 50


@asgiserve.deployment(num_replicas=1, health_check_period_s=60)
class Pid:
    def __call__(self) -> int:
        handled.inc(tags={"kind": "pid"})
        return os.getpid()


def test_a_stopped_worker_does_not_hang_the_page(http: httpx.Client, backend: str) -> None:
    if backend != "subprocess":
        pytest.skip("a worker process to stop")
    app = f"stopped-{next(runs)}"
    asgiserve.run(Pid.bind(), name=app, route_prefix="/stopped")
    pid = http.get("/stopped").json()
    assert total(scrape(http), "test_things_handled_total", application=app) == 1
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        samples = scrape(http)
        assert time.monotonic() - started < 10  # ASK_TIMEOUT_S and a margin, never a hang
        # What it said last is still shown.
        assert total(samples, "test_things_handled_total", application=app) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    assert http.get("/stopped").status_code == 200
    eventually(
        lambda: total(scrape(http), "test_things_handled_total", application=app) == 2,
        "the worker's samples once it runs again",
    )


METERED_APP = """
import os
import asgiserve
from asgiserve import metrics

served = metrics.Counter("test_served", "requests served")

@asgiserve.deployment
def pid() -> int:
    served.inc()
    return os.getpid()

app = pid.bind()
"""


@pytest.mark.slow
def test_every_server_process_is_on_the_page(tmp_path: Path) -> None:
    """`asgiserve run --workers 2`: each process's requests and replicas, on either's page."""
    (tmp_path / "metered.py").write_text(textwrap.dedent(METERED_APP))
    with running(tmp_path, "metered:app", "--workers", "2") as command:
        base = f"http://127.0.0.1:{command.port}"
        eventually(lambda: ok(f"{base}/-/healthz"), "both workers ready", timeout_s=60)
        pids: set[int] = set()
        sent = 0
        while len(pids) < 2 and sent < 400:  # new connections, spread over both processes
            pids.add(httpx.get(base).json())
            sent += 1
        assert len(pids) == 2, "every request went to one process"

        def counted() -> bool:
            samples = parse(httpx.get(f"{base}/-/metrics").text)
            route = {"application": "default", "route": "/", "status_code": "200"}
            answered = total(samples, "asgiserve_num_http_requests_total", **route)
            running = total(samples, "asgiserve_num_replicas", state="RUNNING")
            return answered == sent and total(samples, "test_served_total") == sent and running == 2

        # Each process writes its samples every second; then every scrape, whichever
        # process answers it, shows them all.
        eventually(
            lambda: all(counted() for _ in range(6)), "both processes' counts", timeout_s=15
        )
        os.killpg(command.process.pid, signal.SIGTERM)
        assert command.process.wait(30) == 0


def ok(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_dashboard_graphs_metrics_that_exist() -> None:
    """examples/grafana-dashboard.json names only series the page has."""
    path = Path(__file__).parent.parent / "examples" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    families = [found for found in vars(metrics).values() if isinstance(found, metrics.Family)]
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    series = {family.name + suffix for family in families for suffix in suffixes[family.kind]}
    assert len(families) >= 12
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = set(re.findall(r"\basgiserve_\w+", expr))
        assert names and names <= series, (expr, names - series)
