"""`GET /-/metrics`: every recorder's samples as one Prometheus page.

The page adds up the server's own recorder, the schedulers' gauges, and each replica's
recorder, asked for over its backend (the same call on every backend) with a time limit:
a replica that does not answer (stopped, its loop blocked) shows what it said last.

With `asgiserve run --workers N` each server process also writes its samples to a file in
`ASGISERVE_METRICS_DIR` every second, and the page adds the other processes' files, as
prometheus_client's multiprocess mode does for its own metrics. A replica several servers
share (Ray) is on the page of the server that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from asgiserve import metrics, registry
from asgiserve.backends.base import Replica
from asgiserve.backends.ray_watch import alive
from asgiserve.metrics import Family, Snapshot

logger = logging.getLogger("asgiserve")
ASK_TIMEOUT_S = 1.0  # how long the page waits for a replica's samples
DIR_ENV = "ASGISERVE_METRICS_DIR"
WRITE_EVERY_S = 1.0

last_said: weakref.WeakKeyDictionary[Replica, Snapshot] = weakref.WeakKeyDictionary()


def ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def samples(apps: list[registry.RunningApp]) -> list[Snapshot]:
    """This process's samples: its own, its schedulers' and its replicas'."""
    gauges = metrics.Recorder()
    replicas: list[Replica] = []
    for app in apps:
        gauges.get(metrics.ONGOING_HTTP, (app.name,)).set(app.http_ongoing)
        for name, scheduler in list(app.schedulers.items()):
            labels = (app.name, name)
            gauges.get(metrics.QUEUED, labels).set(len(scheduler.waiters))
            slots = list(scheduler.slots)
            for state, count in (("RUNNING", len(slots)), ("STARTING", scheduler.starting_count),
                                 ("DRAINING", len(scheduler.draining))):  # fmt: skip
                gauges.get(metrics.REPLICAS, (*labels, state)).set(count)
            replicas.extend(slot.replica for slot in slots if not slot.replica.shared)
    asks = {asyncio.ensure_future(replica.metric_samples()): replica for replica in replicas}
    if asks:
        _, late = await asyncio.wait(asks, timeout=ASK_TIMEOUT_S)
        for task in late:
            task.add_done_callback(ignore_outcome)  # not cancelled: a stopped worker would
            # not answer the cancel either; its replacement ends the call
    found = [metrics.process.snapshot(), gauges.snapshot()]
    for task, replica in asks.items():
        if task.done() and not task.cancelled() and task.exception() is None:
            last_said[replica] = task.result()
        said = last_said.get(replica)
        if said is not None:
            found.append(said)
    return found


Merged = dict[tuple[str, tuple[str, ...]], Any]  # (name, label values) -> its data


def merge(snapshots: list[Snapshot]) -> tuple[dict[str, Family], Merged]:
    """Series with the same labels add up: counters, histograms and gauges alike (with
    `--workers N`, each process's replica `#1` is in the one series)."""
    families: dict[str, Family] = {}
    merged: Merged = {}
    for found, series in snapshots:
        for name, labels, data in series:
            known = families.setdefault(name, found[name])
            if known.kind != found[name].kind or len(labels) != len(known.labels):
                continue  # two definitions under one name: the first one wins
            key = (name, tuple(labels))
            before = merged.get(key)
            if before is None:
                merged[key] = data
            elif known.kind == "histogram":
                counts = tuple(a + b for a, b in zip(before[0], data[0], strict=True))
                merged[key] = (counts, before[1] + data[1])
            else:
                merged[key] = before + data
    return families, merged


def families_of(snapshots: list[Snapshot]) -> Iterator[Any]:
    """prometheus_client's metric families for the samples."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    families, merged = merge(snapshots)
    by_family: dict[str, list[tuple[tuple[str, ...], Any]]] = {name: [] for name in families}
    for (name, labels), data in sorted(merged.items()):
        by_family[name].append((labels, data))
    for name, metric in families.items():
        if metric.kind == "counter":
            out: Any = CounterMetricFamily(name, metric.help, labels=metric.labels)
            for labels, data in by_family[name]:
                out.add_metric(labels, data)
        elif metric.kind == "gauge":
            out = GaugeMetricFamily(name, metric.help, labels=metric.labels)
            for labels, data in by_family[name]:
                out.add_metric(labels, data)
        else:
            out = HistogramMetricFamily(name, metric.help, labels=metric.labels)
            for labels, (counts, sum_value) in by_family[name]:
                cumulative, buckets = 0, []
                for bound, count in zip((*metric.buckets, float("inf")), counts, strict=True):
                    cumulative += count
                    buckets.append((floatkey(bound), cumulative))
                out.add_metric(labels, buckets, sum_value)
        yield out


def floatkey(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class Collected:
    """A prometheus_client collector over samples already gathered."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Any]:
        return families_of(self.snapshots)


async def render(apps: list[registry.RunningApp], accept: str) -> tuple[bytes, str]:
    """The page's body and content type, Prometheus text or OpenMetrics as `accept` asks."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    snapshots = await samples(apps)
    snapshots.extend(others_files())
    collected = CollectorRegistry(auto_describe=False)
    collected.register(Collected(snapshots))
    encoder, content_type = choose_encoder(accept)
    return encoder(collected), content_type


# -- several server processes ----------------------------------------------------------


def to_json(snapshots: list[Snapshot]) -> str:
    families, merged = merge(snapshots)
    return json.dumps({
        "families": {name: [f.kind, f.help, f.labels, f.buckets] for name, f in families.items()},
        "series": [[name, labels, data] for (name, labels), data in merged.items()],
    })  # fmt: skip


def from_json(text: str) -> Snapshot:
    data = json.loads(text)
    families = {
        name: Family(name, kind, help, tuple(labels), tuple(buckets))
        for name, (kind, help, labels, buckets) in data["families"].items()
    }
    series = []
    for name, labels, value in data["series"]:
        if isinstance(value, list):  # a histogram's counts and sum
            value = (tuple(value[0]), value[1])
        series.append((name, tuple(labels), value))
    return families, series


def others_files() -> list[Snapshot]:
    """The other server processes' samples; files of processes gone are removed."""
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return []
    found = []
    for path in Path(folder).glob("*.json"):
        pid = int(path.stem) if path.stem.isdigit() else 0
        if pid == os.getpid():
            continue
        if pid == 0 or not alive(pid):  # not a process's file, or its process is gone
            path.unlink(missing_ok=True)
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            found.append(from_json(path.read_text()))
    return found


def start_writing(apps: Callable[[], list[registry.RunningApp]]) -> asyncio.Task[None] | None:
    """With `ASGISERVE_METRICS_DIR` set (`--workers N`), write this process's samples there
    for the others every `WRITE_EVERY_S`."""
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return None
    return asyncio.ensure_future(keep_writing(Path(folder) / f"{os.getpid()}.json", apps))


async def keep_writing(path: Path, apps: Callable[[], list[registry.RunningApp]]) -> None:
    partial = path.with_suffix(".tmp")
    while True:
        try:
            partial.write_text(to_json(await samples(apps())))
            partial.replace(path)  # a reader sees a whole file, this one or the last
        except OSError as exc:  # the folder went away: the page lacks this process
            logger.warning("cannot write this process's metrics to %s: %s", path, exc)
        await asyncio.sleep(WRITE_EVERY_S)
