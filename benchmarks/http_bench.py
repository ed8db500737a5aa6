"""Load-test asgiserve against bare Starlette over HTTP on loopback, with wrk.

Each app runs in its own uvicorn server subprocess (one worker, same settings for all) on a
free 127.0.0.1 port. Per round, the apps run one after another (bare, asgiserve, bare,
asgiserve, ...); for each, the script waits until the server answers, warms it up, loads
it with wrk at each connection count, and stops it. The report is the median per app over
the rounds.

The competitors (`ray-serve`, `litserve`) run the same way, each as its own server with its
framework's default settings, from a separate venv (benchmarks/competitors/setup.sh) that
this script only starts processes from: it never imports them.

    python benchmarks/http_bench.py --rounds 3 --duration 8 --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from apps import FACTORIES, HELLO  # noqa: E402 - needs the path set above

HOST = "127.0.0.1"  # loopback only, never any other address
LUA_SCRIPT = HERE / "wrk_report.lua"
POST_LUA_SCRIPT = HERE / "wrk_post.lua"  # POSTs `{}`, then reports as LUA_SCRIPT does
WRK_MARKER = "WRK_JSON "
BASELINE = "starlette"  # every other app is compared with this one
# Also compared with its own framework when that is in the run (no target applies).
PAIRS = {
    "asgiserve": "starlette-mounted",  # what asgiserve adds beyond Starlette's own Mount
    "fastapi-asgiserve": "fastapi",
    "asgiserve-subprocess": "ray-serve",
    "asgiserve-ray": "ray-serve",
    "asgiserve-ray-wide": "ray-serve-wide",
}
STOP_TIMEOUT = 15.0  # seconds a uvicorn server gets to stop after SIGINT


@dataclass(frozen=True)
class Competitor:
    """Another serving framework, run as its own server from the competitors venv."""

    label: str  # for the report: "x Ray Serve"
    script: str  # in benchmarks/competitors/: `<venv python> script --port N`
    module: str  # importable in the competitors venv when it is set up
    path: str = "/"  # where the framework serves by default
    post: bool = False  # POST `{}` as JSON (LitServe's default endpoint) instead of GET
    args: tuple[str, ...] = ()  # more arguments for the script
    startup_timeout: float = 120.0  # Ray starts a whole local cluster before it answers
    stop_timeout: float = 60.0  # Ray shuts Serve and the cluster down before it exits


COMPETITORS_DIR = HERE / "competitors"
DEFAULT_COMPETITORS_VENV = Path("/tmp/asgiserve-competitors-venv")
COMPETITORS = {
    "ray-serve": Competitor("Ray Serve", "ray_serve_app.py", "ray"),
    # Its default max_ongoing_requests (5) collapses at 64 connections; this one does not.
    "ray-serve-wide": Competitor(
        "Ray Serve", "ray_serve_app.py", "ray", args=("--max-ongoing-requests", "100")
    ),
    "litserve": Competitor("LitServe", "litserve_app.py", "litserve", "/predict", post=True),
}
# Apps the targets apply to: asgiserve mounted in Starlette, against bare Starlette.
TARGETED = ("asgiserve", "asgiserve-wide", "asgiserve-router")
TARGET_THROUGHPUT_RATIO = 0.85  # asgiserve req/s at most connections, vs the baseline
TARGET_P50_RATIO = 1.25  # asgiserve p50 latency at fewest connections, vs the baseline
# asgiserve against the same route one Starlette Mount down (issue 20): throughput only.
TARGET_MOUNTED_RATIO = 0.95
MOUNTED = ("asgiserve", "starlette-mounted")


@dataclass(frozen=True)
class Options:
    apps: list[str]
    connections: list[int]
    duration: int
    warmup: int
    rounds: int
    startup_timeout: float
    pin: bool
    json_path: Path | None
    check: bool


@dataclass(frozen=True)
class Measurement:
    """One wrk run against one app at one connection count."""

    app: str
    connections: int
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    server_cpu_us_per_request: float  # user + system CPU of the server process
    server_cpu_percent: float  # of one core, over the measured run
    load_average: float  # the machine's 1-minute load average after the run


@dataclass(frozen=True)
class Summary:
    """The median over the rounds for one app at one connection count."""

    app: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests_per_s_min: float
    requests_per_s_max: float
    server_cpu_us_per_request: float
    rounds: int
    errors: int


@dataclass(frozen=True)
class Ratio:
    """An app against its baseline: throughput at most connections, p50 at fewest."""

    app: str
    baseline: str
    throughput: float
    throughput_paired: float
    throughput_connections: int
    p50: float
    p50_paired: float
    p50_connections: int
    server_cpu: float  # CPU per request at most connections: the noise-resistant figure
    meets_targets: bool = field(default=False)


# -- the server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def uvicorn_settings() -> list[str]:
    """The same for every app: uvloop and httptools when installed, quiet, one worker."""
    loop = "uvloop" if has_module("uvloop") else "asyncio"
    http = "httptools" if has_module("httptools") else "h11"
    return ["--loop", loop, "--http", http, "--log-level", "warning", "--no-access-log"]


def competitors_venv() -> Path:
    """The competitors' venv: $COMPETITORS_VENV, or where setup.sh puts it by default."""
    return Path(os.environ.get("COMPETITORS_VENV") or DEFAULT_COMPETITORS_VENV)


def competitors_python() -> Path:
    return competitors_venv() / "bin" / "python"


def competitor_missing(app: str) -> str | None:
    """Why `app` cannot run here (its venv or its package is missing), or None."""
    python = competitors_python()
    if not python.exists():
        return f"{python} not found"
    module = COMPETITORS[app].module
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    if subprocess.run([str(python), "-c", probe], capture_output=True).returncode != 0:
        return f"{module} is not installed in {competitors_venv()}"
    return None


def without_missing(apps: list[str], competitors: Collection[str], out: TextIO) -> list[str]:
    """`apps` without the `competitors` whose venv is not set up, with a note for each: they
    are optional, so a missing one is skipped, not an error."""
    kept = []
    for app in apps:
        reason = competitor_missing(app) if app in competitors else None
        if reason is None:
            kept.append(app)
        else:
            print(
                f"skipping {app}: {reason}; run benchmarks/competitors/setup.sh"
                " (set COMPETITORS_VENV for a venv elsewhere)",
                file=out,
            )
    return kept


def runnable(options: Options, out: TextIO) -> Options:
    return replace(options, apps=without_missing(options.apps, COMPETITORS, out))


def server_command(app: str, port: int) -> list[str]:
    if app in COMPETITORS:
        competitor = COMPETITORS[app]
        script = COMPETITORS_DIR / competitor.script
        return [str(competitors_python()), str(script), "--port", str(port), *competitor.args]
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory",
        f"apps:{FACTORIES[app]}", "--host", HOST, "--port", str(port), *uvicorn_settings(),
    ]  # fmt: skip


def endpoint(app: str) -> tuple[str, bool]:
    """The path to load and whether to POST: `GET /` but where a competitor differs."""
    competitor = COMPETITORS.get(app)
    return (competitor.path, competitor.post) if competitor else ("/", False)


def startup_timeout(app: str, options: Options) -> float:
    competitor = COMPETITORS.get(app)
    return max(options.startup_timeout, competitor.startup_timeout if competitor else 0.0)


def pin(pid: int, cpu: int) -> None:
    """Keep `pid` on one CPU (server and wrk on different ones) when `--pin` is given."""
    if cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {cpu})


def answers(url: str, post: bool = False) -> bool:
    data = b"{}" if post else None
    headers = {"Content-Type": "application/json"} if post else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            body = json.loads(response.read())
            return response.status == 200 and bool(body == HELLO)
    except (OSError, ValueError):
        return False


def wait_until_answering(
    url: str, process: subprocess.Popen[bytes], timeout: float, post: bool = False
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering")
        if answers(url, post):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not answer {url} with {HELLO} within {timeout} s")


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, lifespan included
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state first), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def session_members(session: int) -> list[int]:
    """The live processes in `session`: a server and everything it started (Ray's raylet,
    workers and actors, LitServe's workers), whatever process group they moved to."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_in_session(pid: int, session: int) -> None:
    """SIGKILL `pid` through a pidfd, only if it is still in `session` (no reused pid)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        fields = stat_fields(pid)
        if fields is not None and int(fields[3]) == session:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def process_names(pids: Sequence[int]) -> str:
    """`pid (name)` for each, so a note about leftovers says what was left."""
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            names.append(f"{pid} ({command.decode(errors='replace').strip()[:60]})")
    return ", ".join(names)


def end_session(session: int, app: str, timeout: float = 10.0) -> None:
    """Kill what a stopped server left behind, so nothing of it skews the next app."""
    deadline = time.monotonic() + timeout
    left = session_members(session)
    if left:
        print(f"{app}: killing leftover processes {process_names(left)}", file=sys.stderr)
    while left and time.monotonic() < deadline:
        for pid in left:
            kill_in_session(pid, session)
        time.sleep(0.1)
        left = session_members(session)
    if left:
        print(f"{app}: processes {left} survived SIGKILL", file=sys.stderr)


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # also the id of the session that holds the server's processes
    post: bool = False


def cpu_seconds(session: int) -> float:
    """User plus system CPU time of the processes in `session`, all their threads, from
    /proc: the server process alone for uvicorn, every process of Ray or LitServe."""
    total = 0
    for pid in session_members(session):
        fields = stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def in_session(
    command: list[str],
    app: str,
    grace: float,
    ready: Callable[[subprocess.Popen[bytes]], None],
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in a session of its own, so that all it starts can be found and
    stopped with it; yields it once `ready` returns. Its output is shown only if it fails
    (Ray and LitServe log every request)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )
        try:
            ready(process)
            yield process
        except BaseException:
            stop(process, grace)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            stop(process, grace)
            end_session(process.pid, app)


@contextlib.contextmanager
def server(app: str, options: Options) -> Iterator[Server]:
    """Run `app` in a uvicorn (or competitor) subprocess; yields it once it answers."""
    port = free_port()
    path, post = endpoint(app)
    url = f"http://{HOST}:{port}{path}"
    grace = COMPETITORS[app].stop_timeout if app in COMPETITORS else STOP_TIMEOUT

    def ready(process: subprocess.Popen[bytes]) -> None:
        if options.pin:
            pin(process.pid, 0)
        wait_until_answering(url, process, startup_timeout(app, options), post)

    with in_session(server_command(app, port), app, grace, ready) as process:
        yield Server(url, process.pid, post)


# -- wrk ------------------------------------------------------------------------------


def wrk_command(
    url: str, connections: int, duration: int, pinned: bool, post: bool = False
) -> list[str]:
    script = POST_LUA_SCRIPT if post else LUA_SCRIPT
    command = [
        "wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    if pinned and (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
        command = ["taskset", "-c", "1", *command]
    return command


def parse_wrk(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith(WRK_MARKER):
            return json.loads(line[len(WRK_MARKER) :])  # type: ignore[no-any-return]
    raise RuntimeError(f"no {WRK_MARKER.strip()} line in wrk's output:\n{output}")


def run_wrk(target: Server, connections: int, duration: int, pinned: bool) -> dict[str, Any]:
    command = wrk_command(target.url, connections, duration, pinned, target.post)
    env = {**os.environ, "WRK_REPORT_LUA": str(LUA_SCRIPT)}  # wrk_post.lua loads it
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=True, env=env
    )
    return parse_wrk(done.stdout)


def measure(
    app: str, target: Server, connections: int, round_: int, options: Options
) -> Measurement:
    if options.warmup > 0:
        run_wrk(target, connections, options.warmup, options.pin)
    cpu_before = cpu_seconds(target.pid)
    report = run_wrk(target, connections, options.duration, options.pin)
    cpu = cpu_seconds(target.pid) - cpu_before
    latency = report["latency_us"]
    seconds = report["duration_us"] / 1e6
    return Measurement(
        app=app,
        connections=connections,
        round=round_,
        requests_per_s=report["requests"] / seconds,
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        requests=report["requests"],
        errors=report["errors"],
        server_cpu_us_per_request=cpu * 1e6 / max(1, report["requests"]),
        server_cpu_percent=100 * cpu / seconds,
        load_average=os.getloadavg()[0],
    )


def run_all(options: Options, out: TextIO) -> list[Measurement]:
    """Every round runs every app in turn; a server per app per round."""
    measurements: list[Measurement] = []
    for round_ in range(1, options.rounds + 1):
        for app in options.apps:
            with server(app, options) as target:
                for connections in options.connections:
                    found = measure(app, target, connections, round_, options)
                    measurements.append(found)
                    print(progress_line(found), file=out, flush=True)
    return measurements


def progress_line(m: Measurement) -> str:
    errors = sum(m.errors.values())
    return (
        f"round {m.round}  {m.app:<20} c={m.connections:<4} {m.requests_per_s:>9.0f} req/s"
        f"  p50 {m.p50_ms:7.3f} ms  p99 {m.p99_ms:7.3f} ms"
        f"  server {m.server_cpu_us_per_request:5.1f} us CPU/req ({m.server_cpu_percent:3.0f}%)"
        f"  load {m.load_average:.2f}" + (f"  ERRORS {m.errors}" if errors else "")
    )


# -- the report -----------------------------------------------------------------------


def select(measurements: Sequence[Measurement], app: str, connections: int) -> list[Measurement]:
    return [m for m in measurements if m.app == app and m.connections == connections]


def summarise(measurements: Sequence[Measurement], options: Options) -> list[Summary]:
    rows = []
    for app in options.apps:
        for connections in options.connections:
            runs = select(measurements, app, connections)
            rates = [m.requests_per_s for m in runs]
            rows.append(
                Summary(
                    app=app,
                    connections=connections,
                    requests_per_s=statistics.median(rates),
                    p50_ms=statistics.median(m.p50_ms for m in runs),
                    p99_ms=statistics.median(m.p99_ms for m in runs),
                    requests_per_s_min=min(rates),
                    requests_per_s_max=max(rates),
                    server_cpu_us_per_request=statistics.median(
                        m.server_cpu_us_per_request for m in runs
                    ),
                    rounds=len(runs),
                    errors=sum(sum(m.errors.values()) for m in runs),
                )
            )
    return rows


def row(rows: Sequence[Summary], app: str, connections: int) -> Summary:
    return next(r for r in rows if r.app == app and r.connections == connections)


def paired_ratio(
    measurements: Sequence[Measurement], app: str, baseline: str, connections: int, key: str
) -> float:
    """Median over rounds of the per-round ratio: each app against the baseline run
    next to it, which cancels slow drifts in the machine's load."""
    ours = {m.round: getattr(m, key) for m in select(measurements, app, connections)}
    theirs = {m.round: getattr(m, key) for m in select(measurements, baseline, connections)}
    return float(statistics.median(ours[r] / theirs[r] for r in ours if r in theirs))


def ratio(
    rows: Sequence[Summary],
    measurements: Sequence[Measurement],
    app: str,
    base: str,
    connections: tuple[int, int],
) -> Ratio:
    """`app` against `base`: throughput and CPU at `connections[0]`, p50 at `connections[1]`."""
    most, fewest = connections
    throughput = row(rows, app, most).requests_per_s / row(rows, base, most).requests_per_s
    p50 = row(rows, app, fewest).p50_ms / row(rows, base, fewest).p50_ms
    return Ratio(
        app=app,
        baseline=base,
        throughput=throughput,
        throughput_paired=paired_ratio(measurements, app, base, most, "requests_per_s"),
        throughput_connections=most,
        p50=p50,
        p50_paired=paired_ratio(measurements, app, base, fewest, "p50_ms"),
        p50_connections=fewest,
        server_cpu=row(rows, app, most).server_cpu_us_per_request
        / row(rows, base, most).server_cpu_us_per_request,
        meets_targets=meets(app, base, throughput, p50),
    )


def meets(app: str, base: str, throughput: float, p50: float) -> bool:
    if (app, base) == MOUNTED:
        return throughput >= TARGET_MOUNTED_RATIO
    return throughput >= TARGET_THROUGHPUT_RATIO and p50 <= TARGET_P50_RATIO


def ratios(
    rows: Sequence[Summary], measurements: Sequence[Measurement], options: Options
) -> list[Ratio]:
    """Every app against bare Starlette, then each of PAIRS against its own framework."""
    connections = (max(options.connections), min(options.connections))
    pairs = [(app, BASELINE) for app in options.apps if app != BASELINE]
    pairs += [(app, base) for app, base in PAIRS.items() if {app, base} <= set(options.apps)]
    return [
        ratio(rows, measurements, app, base, connections)
        for app, base in pairs
        if base in options.apps
    ]


def targeted(r: Ratio) -> bool:
    return (r.app in TARGETED and r.baseline == BASELINE) or (r.app, r.baseline) == MOUNTED


def table(rows: Sequence[Summary]) -> str:
    header = (
        f"{'app':<20} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'req/s min-max':>17} {'CPU us/req':>10} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        spread = f"{r.requests_per_s_min:.0f}-{r.requests_per_s_max:.0f}"
        lines.append(
            f"{r.app:<20} {r.connections:>5} {r.requests_per_s:>9.0f} {r.p50_ms:>8.3f}"
            f" {r.p99_ms:>8.3f} {spread:>17} {r.server_cpu_us_per_request:>10.1f} {r.errors:>6}"
        )
    return "\n".join(lines)


def figure(value: float) -> str:
    """Three decimals, or three significant digits when that would print 0.000 (a
    competitor at a few requests per second against Starlette's thousands)."""
    return f"{value:.3f}" if value >= 0.01 else f"{value:.3g}"


def ratio_line(r: Ratio) -> str:
    """One app against its baseline; the targets and a verdict for the targeted apps."""
    aim = targeted(r)
    mounted = (r.app, r.baseline) == MOUNTED
    least = TARGET_MOUNTED_RATIO if mounted else TARGET_THROUGHPUT_RATIO
    throughput_target = f"; target >= {least}" if aim else ""
    p50_target = f"; target <= {TARGET_P50_RATIO}" if aim and not mounted else ""
    verdict = ("meets targets" if r.meets_targets else "MISSES targets") if aim else "reference"
    competitor = COMPETITORS.get(r.baseline)
    times = f" x {competitor.label}" if competitor else ""  # "12.3 x Ray Serve"
    return (
        f"{r.app} / {r.baseline}: "
        f"throughput at {r.throughput_connections} conns {figure(r.throughput)}{times} "
        f"(paired {figure(r.throughput_paired)}{throughput_target}), "
        f"p50 at {r.p50_connections} conn {r.p50:.3f} (paired {r.p50_paired:.3f}{p50_target}), "
        f"server CPU/req at {r.throughput_connections} conns {r.server_cpu:.3f}: {verdict}"
    )


def ratio_lines(found: Sequence[Ratio]) -> str:
    return "\n".join(ratio_line(r) for r in found)


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_revision() -> str:
    """The commit under test, with `+dirty` when asgiserve/ has uncommitted changes."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never touch the index
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "asgiserve"], cwd=ROOT, env=env, check=False
    )
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def competitor_versions() -> dict[str, str | None]:
    """Package versions in the competitors venv, asked of its python (never imported here)."""
    names = ("ray", "litserve", "uvicorn", "fastapi", "starlette", "uvloop", "httptools")
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(competitors_python()), "-c", probe, *names], capture_output=True, text=True
    )
    versions: dict[str, str | None] = json.loads(done.stdout) if done.returncode == 0 else {}
    return versions


def environment(apps: Sequence[str] = ()) -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    packages = ("asgiserve", "starlette", "fastapi", "uvicorn", "uvloop", "httptools")
    env: dict[str, Any] = {
        "revision": source_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].strip(),
        "uvicorn_settings": uvicorn_settings(),
        "packages": {name: version_of(name) for name in packages},
    }
    if any(app in COMPETITORS for app in apps):
        env["competitors"] = {"venv": str(competitors_venv()), "packages": competitor_versions()}
    return env


def write_json(
    path: Path,
    options: Options,
    env: dict[str, Any],
    measurements: Sequence[Measurement],
    rows: Sequence[Summary],
    found: Sequence[Ratio],
) -> None:
    document = {
        "options": {**asdict(options), "json_path": str(options.json_path)},
        "environment": env,
        "targets": {
            "throughput_ratio": TARGET_THROUGHPUT_RATIO,
            "p50_ratio": TARGET_P50_RATIO,
            "mounted_throughput_ratio": TARGET_MOUNTED_RATIO,
        },
        "summary": [asdict(r) for r in rows],
        "ratios": [asdict(r) for r in found],
        "measurements": [asdict(m) for m in measurements],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- the command line -----------------------------------------------------------------


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def known_apps() -> list[str]:
    return [*FACTORIES, *COMPETITORS]


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--apps", default="starlette,starlette-mounted,asgiserve",
        help=f"comma-separated, in run order; any of {', '.join(known_apps())}",
    )  # fmt: skip
    parser.add_argument("--connections", default="1,64", help="comma-separated wrk -c values")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median wins")
    parser.add_argument("--startup-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    apps = comma_list(args.apps)
    unknown = [app for app in apps if app not in known_apps()]
    if unknown:
        parser.error(f"unknown apps {unknown}; choose from {known_apps()}")
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration and --rounds must be at least 1, --warmup at least 0")
    return Options(
        apps=apps,
        connections=sorted({int(c) for c in comma_list(args.connections)}),
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        startup_timeout=args.startup_timeout,
        pin=args.pin,
        json_path=args.json,
        check=args.check,
    )


def competitors_line(apps: Sequence[str], competitors: dict[str, Any]) -> str:
    """Which competitors run, from where, on which versions: their servers are their own."""
    names = ", ".join(app for app in apps if app in COMPETITORS)
    packages = competitors["packages"]
    versions = ", ".join(f"{n} {packages.get(n)}" for n in ("ray", "litserve", "uvicorn"))
    return f"{names}: their own servers, default settings, from {competitors['venv']} ({versions})"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    options = runnable(options, sys.stdout)
    env = environment(options.apps)
    settings = " ".join(env["uvicorn_settings"])
    print(
        f"asgiserve {env['revision']}; uvicorn {settings}, one worker, on {HOST}; "
        f"{options.rounds} rounds x {options.duration} s (+{options.warmup} s warm-up)"
    )
    if "competitors" in env:
        print(competitors_line(options.apps, env["competitors"]))
    measurements = run_all(options, sys.stdout)
    rows = summarise(measurements, options)
    found = ratios(rows, measurements, options)
    print(f"\nmedian of {options.rounds} rounds (wrk -t 1):\n{table(rows)}")
    if found:
        print(f"\n{ratio_lines(found)}")
    if options.json_path is not None:
        write_json(options.json_path, options, env, measurements, rows, found)
        print(f"\nwrote {options.json_path}")
    if options.check and not all(r.meets_targets for r in found if targeted(r)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
