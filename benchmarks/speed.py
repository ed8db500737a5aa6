"""Every speed figure of issue 20 in one table, each with its target and whether it is met.

    python benchmarks/speed.py [--rounds 3] [--duration 10] [--json speed.json]

It runs, in this order and with the measuring code of the scripts named:

- over HTTP (`http_bench.py`): Starlette, Starlette one `Mount` down, asgiserve in-process,
  on the subprocess backend and on the ray backend (default and wide), Ray Serve (wide) and
  LitServe, at 1 and 64 connections; then `asgiserve-ray-wide` at 256 connections;
- streaming (`stream_bench.py`): chunk rate, and disconnect-to-cancel latency on every
  backend;
- handle calls (`handle_bench.py`): calls per second and streamed items per second, on
  every backend, in this process (last, so the Ray it starts outlives no other part);
  then one bare Ray actor call, no asgiserve: the floor under the ray backend's latency.

Ratios are of figures from the same run. The competitors come from their own venv
(benchmarks/competitors/setup.sh); without it their figures are skipped, with a note.
`--only http,stream,handle` runs some of the parts. Exit 1 when a figure misses its target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import handle_bench  # noqa: E402 - needs the path set above
import http_bench  # noqa: E402
import stream_bench  # noqa: E402

HTTP_APPS = [
    "starlette", "starlette-mounted", "asgiserve", "asgiserve-subprocess",
    "asgiserve-subprocess-wide", "asgiserve-ray", "asgiserve-ray-wide", "ray-serve-wide",
    "litserve",
]  # fmt: skip
MANY = 256  # connections for the Ray backend's tail latency
MANY_APP = "asgiserve-ray-wide"  # default options queue at most 100, so 256 would get 503s
STREAM_APPS = ["starlette", "asgiserve", "asgiserve-subprocess", "asgiserve-ray"]
HANDLE_BACKENDS = ["inprocess", "subprocess", "ray"]
HANDLE_IN_FLIGHT = 100
STREAM_ITEMS = 50_000
PARTS = ("http", "stream", "handle")


@dataclass(frozen=True)
class Figure:
    """One line of the table: a measured value against its target (None: reference only)."""

    part: str
    name: str
    value: float | None  # None when it could not be measured (a competitor is missing)
    unit: str
    target: str = ""  # ">= 0.95", "<= 1 ms"; empty for a reference figure
    met: bool | None = None


def at_least(part: str, name: str, value: float | None, least: float, unit: str = "") -> Figure:
    met = None if value is None else value >= least
    return Figure(part, name, value, unit, f">= {least:g}{unit and ' ' + unit}", met)


def at_most(part: str, name: str, value: float | None, most: float, unit: str = "") -> Figure:
    met = None if value is None else value <= most
    return Figure(part, name, value, unit, f"<= {most:g}{unit and ' ' + unit}", met)


def below(part: str, name: str, value: float | None, limit: float, unit: str = "") -> Figure:
    met = None if value is None else value < limit
    return Figure(part, name, value, unit, f"< {limit:g}{unit and ' ' + unit}", met)


# -- HTTP -------------------------------------------------------------------------------


class Rows:
    """The medians of an `http_bench` run, looked up by app and connection count."""

    def __init__(self, rows: Sequence[http_bench.Summary]) -> None:
        self.found = {(r.app, r.connections): r for r in rows}

    def get(self, app: str, connections: int, key: str) -> float | None:
        found = self.found.get((app, connections))
        return None if found is None else float(getattr(found, key))

    def ratio(self, app: str, base: str, connections: int, key: str) -> float | None:
        ours, theirs = self.get(app, connections, key), self.get(base, connections, key)
        return None if ours is None or theirs is None or not theirs else ours / theirs


def http_run(
    apps: list[str], connections: list[int], args: argparse.Namespace
) -> tuple[list[http_bench.Summary], list[http_bench.Measurement]]:
    options = http_bench.Options(
        apps=apps, connections=connections, duration=args.duration, warmup=args.warmup,
        rounds=args.rounds, startup_timeout=30.0, pin=False, json_path=None, check=False,
    )  # fmt: skip
    options = http_bench.runnable(options, sys.stdout)
    measurements = http_bench.run_all(options, sys.stdout)
    return http_bench.summarise(measurements, options), measurements


def http_figures(rows: Rows) -> list[Figure]:
    part = "http"
    rps = "requests_per_s"
    figures = [
        at_least(part, "asgiserve / starlette-mounted req/s, 64 conns",
                 rows.ratio("asgiserve", "starlette-mounted", 64, rps), 0.95),
        at_least(part, "asgiserve / starlette req/s, 64 conns",
                 rows.ratio("asgiserve", "starlette", 64, rps), 0.85),
        at_most(part, "asgiserve / starlette p50, 1 conn",
                rows.ratio("asgiserve", "starlette", 1, "p50_ms"), 1.25),
        at_least(part, "asgiserve-subprocess / starlette req/s, 64 conns",
                 rows.ratio("asgiserve-subprocess", "starlette", 64, rps), 0.5),
        at_least(part, "asgiserve-subprocess-wide / starlette req/s, 64 conns",
                 rows.ratio("asgiserve-subprocess-wide", "starlette", 64, rps), 0.65),
    ]  # fmt: skip
    for app in ("asgiserve-subprocess", "asgiserve-subprocess-wide"):
        figures.append(at_most(part, f"{app} p50, 1 conn", rows.get(app, 1, "p50_ms"), 0.25, "ms"))
    for app in ("asgiserve-ray", "asgiserve-ray-wide"):
        figures += [
            at_least(part, f"{app} / ray-serve-wide req/s, 64 conns",
                     rows.ratio(app, "ray-serve-wide", 64, rps), 10, "x"),
            at_least(part, f"{app} / litserve req/s, 64 conns",
                     rows.ratio(app, "litserve", 64, rps), 3, "x"),
            at_most(part, f"{app} server CPU per request, 64 conns",
                    ms(rows.get(app, 64, "server_cpu_us_per_request")), 0.3, "ms"),
            at_most(part, f"{app} p50, 1 conn", rows.get(app, 1, "p50_ms"), 1, "ms"),
        ]  # fmt: skip
    return figures


def many_figures(rows: Rows) -> list[Figure]:
    p99 = at_most("http", f"{MANY_APP} p99, {MANY} conns", rows.get(MANY_APP, MANY, "p99_ms"),
                  100, "ms")  # fmt: skip
    errors = rows.get(MANY_APP, MANY, "errors")
    return [p99, at_most("http", f"{MANY_APP} errors, {MANY} conns", errors, 0)]


def ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def reference_rows(rows: Rows, apps: Sequence[str], connections: Sequence[int]) -> list[Figure]:
    """Each app's own req/s and p50, so a ratio can be read against what it divides."""
    figures = []
    for app in apps:
        for count in connections:
            rate = rows.get(app, count, "requests_per_s")
            if rate is not None:
                p50 = rows.get(app, count, "p50_ms")
                figures.append(Figure("http", f"{app} req/s, {count} conns", rate, ""))
                figures.append(Figure("http", f"{app} p50, {count} conns", p50, "ms"))
    return figures


# -- streaming and handles --------------------------------------------------------------


def stream_figures(args: argparse.Namespace) -> list[Figure]:
    options = argparse.Namespace(chunks=10_000, streams=5, disconnects=args.disconnects)
    apps = STREAM_APPS
    rates: dict[str, list[float]] = {app: [] for app in apps}
    latencies: dict[str, list[float]] = {app: [] for app in apps}
    for _ in range(args.rounds):
        for app in apps:
            stream_bench.measure(app, options, rates, latencies)
    rate = {app: statistics.median(rates[app]) for app in apps}
    part = "stream"
    figures = [
        at_least(part, "asgiserve / starlette chunk rate", rate["asgiserve"] / rate["starlette"],
                 stream_bench.TARGET_CHUNK_RATIO),
        at_least(part, "asgiserve-subprocess chunks/s", rate["asgiserve-subprocess"],
                 stream_bench.TARGET_SUBPROCESS_CHUNKS_S),
        Figure(part, "asgiserve-ray chunks/s", rate["asgiserve-ray"], ""),
    ]  # fmt: skip
    for app in stream_bench.CANCELS:
        p99 = stream_bench.percentile(latencies[app], 0.99)
        figures.append(below(part, f"{app} disconnect-to-cancel p99", p99,
                             stream_bench.TARGET_CANCEL_P99_MS, "ms"))  # fmt: skip
    return figures


async def handle_figures(args: argparse.Namespace) -> list[Figure]:
    import asgiserve

    figures = []
    for backend in HANDLE_BACKENDS:
        for ongoing in (None, HANDLE_IN_FLIGHT):
            rate = await handle_bench.calls_per_second(
                backend, ongoing, HANDLE_IN_FLIGHT, args.handle_duration
            )
            name = f"{backend} handle calls/s, {HANDLE_IN_FLIGHT} in flight"
            if ongoing is None and backend == "subprocess":
                figures.append(at_least("handle", name + ", default options", rate,
                                        handle_bench.TARGET_SUBPROCESS_CALLS_S))  # fmt: skip
            else:
                setting = "default options" if ongoing is None else f"max_ongoing {ongoing}"
                figures.append(Figure("handle", f"{name}, {setting}", rate, ""))
    for backend in HANDLE_BACKENDS:
        rate = await handle_bench.items_per_second(backend, STREAM_ITEMS)
        figures.append(Figure("handle", f"{backend} streamed items/s", rate, ""))
    floor = await bare_ray_call_ms()
    figures.append(Figure("handle", "Ray alone: one actor call's round trip, p50", floor, "ms"))
    await asgiserve.shutdown_async()
    return figures


async def bare_ray_call_ms(calls: int = 1000) -> float:
    """What one call to an async actor takes with Ray alone, no asgiserve (in the Ray the
    handle runs started): the floor under the ray backend's 1-connection p50."""
    import ray

    @ray.remote
    class Echo:
        async def echo(self, value: Any) -> Any:
            return value

    echo = Echo.remote()  # type: ignore[attr-defined]
    await echo.echo.remote(None)
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        await echo.echo.remote({"type": "http.response.body", "body": b"{}"})
        took.append(time.perf_counter() - started)
    ray.kill(echo)
    return statistics.median(took) * 1000


def run_handles(args: argparse.Namespace) -> list[Figure]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(handle_figures(args))
    return uvloop.run(handle_figures(args))


# -- the report -------------------------------------------------------------------------


def cell(value: float | None) -> str:
    if value is None:
        return "skipped"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def verdict(figure: Figure) -> str:
    if not figure.target:
        return ""
    return {True: "pass", False: "MISS", None: "-"}[figure.met]


def table(figures: Sequence[Figure]) -> str:
    header = f"{'part':<7} {'figure':<62} {'value':>10} {'unit':<4} {'target':<12} result"
    lines = [header, "-" * len(header)]
    for f in figures:
        lines.append(
            f"{f.part:<7} {f.name:<62} {cell(f.value):>10} {f.unit:<4} {f.target:<12} "
            f"{verdict(f)}".rstrip()
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median wins")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each")
    parser.add_argument("--disconnects", type=int, default=100, help="per app and round")
    parser.add_argument("--handle-duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.only = http_bench.comma_list(args.only)
    unknown = [part for part in args.only if part not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration and --rounds must be at least 1, --warmup at least 0")
    return args


def timed(part: str, run: Callable[[], list[Figure]], took: dict[str, float]) -> list[Figure]:
    started = time.monotonic()
    figures = run()
    took[part] = time.monotonic() - started
    return figures


def run_http(args: argparse.Namespace) -> list[Figure]:
    rows, _ = http_run(HTTP_APPS, [1, 64], args)
    many, _ = http_run([MANY_APP], [MANY], args)
    found = Rows([*rows, *many])
    return [*http_figures(found), *many_figures(found), *reference_rows(found, HTTP_APPS, [1, 64])]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = http_bench.environment(HTTP_APPS)
    print(f"asgiserve {env['revision']}; {args.rounds} rounds x {args.duration} s "
          f"(+{args.warmup} s warm-up); parts: {', '.join(args.only)}", flush=True)  # fmt: skip
    runs: dict[str, Callable[[], list[Figure]]] = {
        "http": lambda: run_http(args),
        "stream": lambda: stream_figures(args),
        "handle": lambda: run_handles(args),
    }
    took: dict[str, float] = {}
    figures = [f for part in PARTS if part in args.only for f in timed(part, runs[part], took)]
    print(f"\n{table(figures)}\n")
    print("took " + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in took.items())
          + f"; load average {env['load_average'][0]:.2f} at the start")  # fmt: skip
    missed = [f for f in figures if f.met is False]
    print(f"{len(missed)} of {sum(f.met is not None for f in figures)} targets missed")
    if args.json is not None:
        document: dict[str, Any] = {
            "options": {**vars(args), "json": str(args.json)},
            "environment": env,
            "took_s": took,
            "figures": [asdict(f) for f in figures],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
