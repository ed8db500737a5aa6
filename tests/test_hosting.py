"""Hosting: `asgiserve run` as a real subprocess on loopback ports, with uvicorn and
Hypercorn; config files; keep-alive; graceful shutdown; `/-/healthz` and `/-/routes`.

The served modules are written to a temporary directory, which is the command's working
directory, as a user's project would be.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import asgiserve
from asgiserve import config_file, registry
from asgiserve.cli import make_parser
from tests.servers import SERVERS, free_port, serve, wait_for_port

ROOT = Path(__file__).resolve().parent.parent

SERVICE = """
import asyncio, os, time

from starlette.requests import Request

import asgiserve


@asgiserve.deployment
class Model:
    def __init__(self, delay: float = 0.0, tag: str = "model"):
        time.sleep(delay)  # loading a model
        self.tag = tag

    async def __call__(self, request: Request) -> dict:
        await asyncio.sleep(float(request.query_params.get("sleep", 0)))
        client = request.client.host if request.client else None  # None on a Unix socket
        return {"tag": self.tag, "pid": os.getpid(), "root_path": request.scope["root_path"],
                "client": client, "scheme": request.url.scheme}


@asgiserve.deployment(num_replicas=2)
class Loading:
    def __init__(self):
        with open("loading.pids", "a") as pids:  # the replica's process, for the test
            pids.write(f"{os.getpid()}\\n")
        time.sleep(60)


@asgiserve.deployment
class Broken:
    def __init__(self):
        raise RuntimeError("the weights are missing")


app = Model.bind()
slow = Model.options(num_replicas=2).bind(0.6, "slow")
broken = Broken.bind()
loading = Loading.bind()


def build(args: dict):
    return Model.bind(tag=args["tag"])
"""

WEB = """
from fastapi import FastAPI

import asgiserve
from service import Model

asgiserve.run(Model.bind(tag="web"), name="web", route_prefix="/web")
app = FastAPI(lifespan=asgiserve.router.lifespan)


@app.get("/own")
def own() -> str:
    return "the app's own route"


app.mount("/", asgiserve.router)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "service.py").write_text(SERVICE)
    (tmp_path / "web.py").write_text(WEB)
    return tmp_path


# What `asgiserve run` puts before each message (`asgiserve.logs.TextFormatter`).
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+ ")


class Command:
    """A running `python -m asgiserve run ...`; its stderr lines are collected."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.lines: list[str] = []  # each line's message, without its time, level and logger
        self.raw: list[str] = []  # as written
        assert process.stderr is not None
        self.reader = threading.Thread(target=self.read, args=(process.stderr,), daemon=True)
        self.reader.start()

    def read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.raw.append(line.rstrip("\n"))
            self.lines.append(LOG_PREFIX.sub("", line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"no line matching {pattern!r} in:\n{self.output}")
            time.sleep(0.05)

    def wait_until_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"the command did not listen:\n{self.output}")
            time.sleep(0.05)

    def wait_until_ready(self) -> None:
        self.wait_for_line(r"Ready at http://")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 20) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the command did not exit within {timeout} s:\n{self.output}")
        self.reader.join(5)
        return code


def command_line(target: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "asgiserve", "run", target, *flags]


@contextmanager
def running(
    project: Path, target: str, *flags: str, port: int | None = None, **env: str
) -> Iterator[Command]:
    """`asgiserve run TARGET --port PORT FLAGS...` in `project`, killed if still running."""
    if port is None:  # else the config file says which
        port = free_port()
        flags = ("--port", str(port), *flags)
    argv = command_line(target, *flags)
    process = subprocess.Popen(
        argv,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        start_new_session=True,  # its own process group, as in a terminal
    )
    command = Command(process, port)
    try:
        yield command
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        command.reader.join(5)
        assert process.stderr is not None
        process.stderr.close()


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# -- the command -------------------------------------------------------------------------


def test_help_documents_every_option_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asgiserve", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in [
        ("--server", "uvicorn"),
        ("--host", "127.0.0.1"),
        ("--port", "8000"),
        ("--backend", "inprocess"),
        ("--route-prefix", "/"),
        ("--keep-alive-timeout-s", "5"),
        ("--request-timeout-s", "no limit"),
        ("--graceful-shutdown-timeout-s", "20"),
        ("--root-path", "none"),
        ("--workers", "1"),
        ("--ssl-keyfile", "none"),
        ("--ssl-certfile", "none"),
        ("--forwarded-allow-ips", "127.0.0.1"),
    ]:
        assert flag in text
        help_text = text.split(flag, 2)[-1].split(" --", 1)[0]
        assert "(default: " in help_text and default in help_text.split("(default: ")[1], flag
    assert "ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S" in text


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "asgiserve"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == f"asgiserve {asgiserve.__version__}"


def test_import_asgiserve_stays_light() -> None:
    code = "import asgiserve, sys; print(sorted(m for m in ('yaml', 'asgiserve.cli', 'asgiserve.host', 'asgiserve.config_file', 'uvicorn', 'hypercorn') if m in sys.modules))"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("server", SERVERS)
def test_application_target_progress_healthz_and_routes(project: Path, server: str) -> None:
    flags = (
        "--server",
        server,
        "--name",
        "model",
        "--route-prefix",
        "/m",
        "--backend",
        "inprocess",
    )
    with running(project, "service:slow", *flags) as command:
        command.wait_until_listening()
        early = httpx.get(f"{command.url}/-/healthz")  # the port answers while models load
        command.wait_until_ready()
        assert early.status_code == 503
        assert re.fullmatch(r"model: ([01]/2 replicas ready|waiting to deploy)\n", early.text)
        assert early.headers["retry-after"] == "1"
        assert httpx.get(f"{command.url}/-/healthz").text == "success"
        assert httpx.get(f"{command.url}/-/routes").json() == {"/m": "model"}
        assert httpx.get(f"{command.url}/m").json()["tag"] == "slow"
        assert command.stop() == 0
    progress = [line for line in command.lines if line.startswith("model:")]
    assert progress[-3:] == [
        "model: 0/2 replicas ready",
        "model: 1/2 replicas ready",
        "model: 2/2 replicas ready",
    ]
    # docs/deploying.md shows these lines as they are written: time, level, logger, message.
    docs = (ROOT / "docs" / "deploying.md").read_text()
    shown = [line for line in docs.splitlines() if LOG_PREFIX.match(line) and "ready" in line]
    shown = [line for line in shown if "replicas ready" in line]
    assert [LOG_PREFIX.sub("", line) for line in shown] == progress[-3:]
    written = [line for line in command.raw if "replicas ready" in line]
    assert all(LOG_PREFIX.match(line) and " INFO asgiserve model:" in line for line in written)
    assert f"Ready at {command.url}" in command.lines
    assert f"  model at {command.url}/m" in command.lines


@pytest.mark.parametrize("server", SERVERS)
def test_asgi_app_target(project: Path, server: str) -> None:
    """`module:app`: the user's app, whose module deploys at import; it mounts the router."""
    with running(project, "web:app", "--server", server) as command:
        command.wait_until_ready()
        with httpx.Client(base_url=command.url) as client:
            assert client.get("/web").json()["tag"] == "web"
            assert client.get("/own").json() == "the app's own route"
            assert client.get("/-/healthz").text == "success"
            assert client.get("/-/routes").json() == {"/web": "web"}
        assert command.stop() == 0
    assert "web: 1/1 replicas ready" in command.lines


def test_settings_reach_the_router_and_the_server(project: Path) -> None:
    flags = ("--request-timeout-s", "0.5", "--root-path", "/proxy", "--no-status-routes")
    with running(project, "service:app", *flags) as command:
        command.wait_until_ready()
        with httpx.Client(base_url=command.url) as client:
            assert client.get("/", params={"sleep": 5}).status_code == 504
            assert client.get("/x").json()["root_path"] == "/proxy"
            assert client.get("/-/healthz").json()["tag"] == "model"  # off: the app at /
        assert command.stop() == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["service:nothing"], "module 'service' has no attribute 'nothing'"),
        (["nowhere:app"], "cannot import module 'nowhere'"),
        (["nowhere:app", "--app-dir", "/"], "Looked in /, "),
        (["web:app", "--route-prefix", "/x"], "--route-prefix is for a bound application"),
        (["service:app", "--route-prefix", "x"], "--route-prefix must start with '/'"),
        (["service:app", "--keep-alive-timeout-s", "0"], "keep_alive_timeout_s must be above 0"),
        (["service:app", "--workers", "0"], "--workers must be at least 1"),
        (["service:Model.name", "--workers", "2"], "service:Model.name is str"),
        (["nowhere:app", "--workers", "2"], "cannot find module 'nowhere'"),
        (["service:app", "--ssl-keyfile", "service.py"], "needs --ssl-certfile"),
        (["service:app", "--ssl-certfile", "service.py"], "needs --ssl-keyfile"),
        (
            ["service:app", "--ssl-keyfile", "no.pem", "--ssl-certfile", "service.py"],
            "--ssl-keyfile (http_options.ssl_keyfile) 'no.pem': no such file",
        ),
        (
            ["service:app", "--ssl-keyfile", "service.py", "--ssl-certfile", "service.py"],
            "cannot serve HTTPS with the key 'service.py'",
        ),
        (["service:app", "--reload", "--workers", "2"], "--reload runs one server process"),
        (["service:app", "--reload", "--reload-dir", "nowhere"], "nowhere': no such directory"),
    ],
)
def test_bad_targets_and_flags_are_clear_errors(
    project: Path, argv: list[str], message: str
) -> None:
    """Found before serving, or by each of several workers, which then stop the command."""
    result = subprocess.run(
        command_line(*argv, "--port", str(free_port())),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode in (2, 3), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_constructor_that_raises_fails_the_command(project: Path) -> None:
    with running(project, "service:broken") as command:
        code = command.wait()
    assert code == 3
    assert "RuntimeError: the weights are missing" in command.output
    assert "asgiserve: application 'default' failed to deploy; stopping. Its error:" in (
        command.lines
    )


@pytest.mark.parametrize("server", SERVERS)
def test_a_config_builder_that_raises_is_framed_with_its_application(
    project: Path, server: str
) -> None:
    (project / "builders.py").write_text(
        "def build(args):\n    raise ValueError('no model for ' + args['tag'])\n"
    )
    (project / "serve.yaml").write_text(
        "applications:\n  - name: built\n    import_path: builders:build\n"
        "    args: {tag: tiny}\n"
    )
    done = run_command(project, "serve.yaml", "--server", server, "--port", str(free_port()))
    assert done.returncode == 3
    lines = [LOG_PREFIX.sub("", line) for line in done.stderr.splitlines()]
    assert lines[0] == (
        "asgiserve: application 'built' could not be built: its builder builders:build raised; "
        "stopping. Its error:"
    )
    assert "ValueError: no model for tiny" in lines
    assert "builders.py" in done.stderr  # the user's own traceback
    assert lines[-1].startswith("asgiserve: application 'built' could not be built")


# -- keep-alive --------------------------------------------------------------------------


def idle_close_after(port: int) -> float:
    """Send one request on a raw keep-alive connection, read the response, then time how
    long the idle connection stays open until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        while len(body) < length:
            body += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        idle_since = time.monotonic()
        assert sock.recv(65536) == b""  # blocks until the server closes the connection
        return time.monotonic() - idle_since


@pytest.mark.parametrize("server", SERVERS)
def test_keep_alive_timeout_flag(project: Path, server: str) -> None:
    with running(project, "service:app", "--server", server, "--keep-alive-timeout-s", "1") as c:
        c.wait_until_ready()
        assert 0.7 < idle_close_after(c.port) < 5
        assert c.stop() == 0


@pytest.mark.parametrize("server", SERVERS)
def test_keep_alive_variable_wins_over_file_and_flag(project: Path, server: str) -> None:
    port = free_port()
    (project / "serve.yaml").write_text(
        textwrap.dedent(f"""\
            http_options:
              port: {port}
              keep_alive_timeout_s: 60
            applications:
              - name: app
                import_path: service:app
            """)
    )
    flags = ("--server", server, "--keep-alive-timeout-s", "30")
    env = {"ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S": "1"}
    with running(project, "serve.yaml", *flags, port=port, **env) as command:
        command.wait_until_ready()
        assert 0.7 < idle_close_after(port) < 5
        assert command.stop() == 0


def test_keep_alive_default_is_five_seconds(project: Path) -> None:
    from asgiserve.servers import hypercorn_config, uvicorn_config

    options = asgiserve.HTTPOptions()
    assert options.keep_alive_timeout_s == 5
    assert uvicorn_config(None, options).timeout_keep_alive == 5
    assert hypercorn_config(options).keep_alive_timeout == 5


# -- graceful shutdown -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["inprocess", "subprocess", "ray"])
@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_lets_the_request_in_flight_finish(
    project: Path, server: str, backend: str, request: pytest.FixtureRequest
) -> None:
    env = {}
    if backend == "ray":  # the session's Ray: the command's actors live there
        pytest.importorskip("ray")
        ray = request.getfixturevalue("ray_cluster")
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    flags = ("--server", server, "--backend", backend)
    with running(project, "service:app", *flags, **env) as command:
        command.wait_until_ready()
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            result["response"] = httpx.get(f"{command.url}/", params={"sleep": 1.5}, timeout=30)

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)  # the request is running in the replica
        command.process.send_signal(signal.SIGTERM)
        thread.join(30)
        code = command.wait()
    assert result["response"].status_code == 200, command.output
    assert code == 0
    replica_pid = result["response"].json()["pid"]
    assert (replica_pid == command.process.pid) == (backend == "inprocess")
    assert gone(replica_pid)  # replicas (worker processes too) were stopped


@pytest.mark.parametrize("server", SERVERS)
def test_ctrl_c_to_the_process_group_is_graceful(project: Path, server: str) -> None:
    """SIGINT to every process of the group, as a terminal's Ctrl-C: the worker processes
    of the subprocess backend keep running the request until the server stops them."""
    flags = ("--server", server, "--backend", "subprocess")
    with running(project, "service:app", *flags) as command:
        command.wait_until_ready()
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: result.update(
                response=httpx.get(f"{command.url}/", params={"sleep": 1.5}, timeout=30)
            )
        )
        thread.start()
        time.sleep(0.5)
        os.killpg(command.process.pid, signal.SIGINT)
        thread.join(30)
        code = command.wait()
    assert result["response"].status_code == 200, command.output
    assert code == 0
    assert gone(result["response"].json()["pid"])


@pytest.mark.parametrize("server", SERVERS)
def test_graceful_shutdown_timeout_limits_the_drain(project: Path, server: str) -> None:
    """Past `graceful_shutdown_timeout_s` (the server's, and the deployment's for its
    replicas) a request still running is cut short, and the command exits 0."""
    port = free_port()
    (project / "serve.yaml").write_text(
        textwrap.dedent(f"""\
            http_options:
              port: {port}
              graceful_shutdown_timeout_s: 0.5
            applications:
              - import_path: service:app
                deployments:
                  - name: Model
                    graceful_shutdown_timeout_s: 0.5
            """)
    )
    with running(project, "serve.yaml", "--server", server, port=port) as command:
        command.wait_until_ready()
        outcome: dict[str, object] = {}

        def endless_request() -> None:
            try:
                outcome["status"] = httpx.get(command.url, params={"sleep": 60}, timeout=60)
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=endless_request)
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        command.process.send_signal(signal.SIGTERM)
        code = command.wait(timeout=30)
        stopped_after = time.monotonic() - started
        thread.join(30)
    assert code == 0
    assert stopped_after < 15  # not the request's 60 s, nor the default 20 s drain
    assert "error" in outcome or outcome["status"].status_code >= 500  # type: ignore[attr-defined]


# -- several workers ---------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_workers_each_deploy_their_own_replicas(project: Path, server: str) -> None:
    with running(project, "service:app", "--server", server, "--workers", "2") as command:
        deadline = time.monotonic() + 60
        ready: set[str] = set()
        while len(ready) < 2 and time.monotonic() < deadline:
            ready = {
                m[1] for line in command.lines if (m := re.match(r"\[worker (\d+)\] Ready", line))
            }
            time.sleep(0.05)
        assert len(ready) == 2, command.output
        pids = {httpx.get(f"{command.url}/").json()["pid"] for _ in range(20)}
        assert {str(pid) for pid in pids} <= ready  # each answers from its own replicas
        assert command.stop() == 0


# -- config files ------------------------------------------------------------------------

CONFIG = """\
http_options:
  host: 127.0.0.1
  port: {port}
  request_timeout_s: 30
applications:
  - name: first
    route_prefix: /first
    import_path: service:app
    deployments:
      - name: Model
        num_replicas: 2
  - name: built
    route_prefix: /built
    import_path: service:build
    args:
      tag: from the config file
    backend: subprocess
  - name: handles-only
    route_prefix: null
    import_path: service:app
"""


@pytest.mark.parametrize("server", SERVERS)
def test_config_file(project: Path, server: str) -> None:
    port = free_port()
    (project / "serve.yaml").write_text(CONFIG.format(port=port))
    with running(project, "serve.yaml", "--server", server, port=port) as command:
        command.wait_until_ready()
        with httpx.Client(base_url=command.url) as client:
            assert client.get("/-/routes").json() == {"/first": "first", "/built": "built"}
            assert client.get("/first").json()["tag"] == "model"
            built = client.get("/built").json()
            assert built["tag"] == "from the config file"
            assert built["pid"] != command.process.pid  # its own backend: a worker process
        assert command.stop() == 0
    assert "first: 2/2 replicas ready" in command.lines  # the override
    assert "handles-only: 1/1 replicas ready" in command.lines


def test_config_file_errors_name_file_field_and_line(project: Path) -> None:
    (project / "bad.yaml").write_text(
        "http_options:\n  port: eighty\napplications:\n  - import_path: service:app\n"
        "    deployments:\n      - name: Model\n        num_replica: 2\n"
    )
    result = subprocess.run(
        command_line("bad.yaml"), cwd=project, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "asgiserve run: error: bad.yaml, line 2: http_options.port: Input should be a valid "
        "integer, unable to parse string as an integer (got 'eighty')",
        "bad.yaml, line 7: applications[0].deployments[0].num_replica: unknown field (known: "
        "name, num_replicas, autoscaling_config, user_config, logging_config, "
        "max_ongoing_requests, max_queued_requests, backend, "
        "ray_actor_options, health_check_period_s, health_check_timeout_s, "
        "graceful_shutdown_timeout_s)",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("applications: []\n", "c.yaml, line 1: applications: List should have at least 1 item"),
        ("http_options: {}\n", "c.yaml, line 1: applications: Field required"),
        ("applications:\n  - name: a\n", "c.yaml, line 2: applications[0].import_path: Field"),
        ("applications:\n  - import_path: m\n", "import_path must be 'module:attribute'"),
        ("- 1\n", "c.yaml: a config file holds a mapping"),
        ("applications: [\n", "c.yaml, line 2: not valid YAML or JSON"),
        (
            "applications:\n  - import_path: a:b\n  - name: c\n    import_path: a:c\n",
            "c.yaml, line 3: applications[1].route_prefix: route_prefix '/' is already used",
        ),
        (
            "applications:\n  - import_path: a:b\n    backend: gpu\n",
            "c.yaml, line 3: applications[0].backend: Input should be 'inprocess', 'subprocess'",
        ),
        (
            "applications:\n  - import_path: a:b\n    route_prefix: api\n",
            "line 3: applications[0].route_prefix: route_prefix must start with '/'",
        ),
    ],
)
def test_config_file_validation(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(config_file.ConfigError) as caught:
        config_file.load(path)
    assert message in str(caught.value).replace(str(tmp_path) + "/", "")


def test_config_file_import_errors_point_at_the_application(project: Path) -> None:
    from asgiserve.host import config_jobs

    (project / "c.json").write_text(
        '{"applications": [\n  {"import_path": "service:app"},\n'
        '  {"name": "b", "route_prefix": "/b",\n   "import_path": "service:app",\n'
        '   "deployments": [{"name": "Nope", "num_replicas": 2}]}]}\n'
    )
    old_cwd = os.getcwd()
    os.chdir(project)
    try:
        config = config_file.load("c.json")
        with pytest.raises(
            config_file.ConfigError,
            match=r"c.json, line 5: applications\[1\].deployments: no deployment named \['Nope'\]",
        ):  # noqa: E501
            config_jobs(config, asgiserve.router)
    finally:
        os.chdir(old_cwd)
        sys.modules.pop("service", None)


# -- the router's status routes, for servers users start themselves ----------------------


def test_healthz_waits_for_applications_deployed_while_serving(backend: str) -> None:
    """`uvicorn main:app` and friends: an application deployed while the server runs (here
    from a thread) keeps `/-/healthz` at 503 until all its replicas are up."""
    import asyncio

    from fastapi import FastAPI

    @asgiserve.deployment(num_replicas=2)
    class Slow:
        def __init__(self, gate: object) -> None:
            deadline = time.monotonic() + 10
            while not os.path.exists(str(gate)) and time.monotonic() < deadline:
                time.sleep(0.02)

        async def __call__(self, request: object) -> str:
            await asyncio.sleep(0)
            return "up"

    app = FastAPI(lifespan=asgiserve.router.lifespan)
    app.mount("/", asgiserve.router)
    gate = Path(f"/tmp/asgiserve-gate-{os.getpid()}-{time.monotonic_ns()}")
    with serve(app) as server, server.client() as client:
        assert client.get("/-/healthz").text == "success"  # nothing to wait for
        deploying = threading.Thread(
            target=asgiserve.run,
            args=(Slow.bind(str(gate)),),
            kwargs={"name": "slow", "route_prefix": "/slow"},
        )
        deploying.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if asgiserve.status()["applications"].get("slow", {}).get("deployments"):
                    break
                time.sleep(0.01)
            waiting = client.get("/-/healthz")
            assert waiting.status_code == 503
            assert waiting.text == "slow: 0/2 replicas ready\n"
            assert asgiserve.status()["applications"]["slow"]["status"] == "DEPLOYING"
        finally:
            gate.touch()
            deploying.join(30)
            gate.unlink()
        assert client.get("/-/healthz").text == "success"
        assert client.get("/-/routes").json() == {"/slow": "slow"}
        assert client.get("/slow").text == "up"
        assert client.post("/-/healthz").status_code == 405
        assert asgiserve.status()["applications"]["slow"]["status"] == "RUNNING"


def test_status_routes_switch_off(backend: str) -> None:
    router = asgiserve.Router(status_routes=False)

    @asgiserve.deployment
    def echo(request: object) -> str:
        return "the application at /"

    asgiserve.run(echo.bind(), name="echo", router=router)
    with serve(router) as server, server.client() as client:
        assert client.get("/-/healthz").text == "the application at /"
        assert client.get("/-/status").text == "the application at /"
        router.status_routes = True
        assert client.get("/-/healthz").text == "success"
        status = client.get("/-/status").json()  # asgiserve.status(), over HTTP
        assert status["applications"]["echo"]["deployments"]["echo"]["running_replicas"] == 1
        assert json.loads(json.dumps(asgiserve.status())).keys() == status.keys()


# -- the docs ----------------------------------------------------------------------------


def fenced(page: str, info: str) -> list[str]:
    return re.findall(rf"^```{info}\n(.*?)^```", page, flags=re.M | re.S)


def test_deploying_page_commands_and_config_files_are_valid(tmp_path: Path) -> None:
    """The shell commands of docs/deploying.md parse, and its config files validate."""
    page = (ROOT / "docs" / "deploying.md").read_text()
    commands = [
        line.split("asgiserve run", 1)[1].split("#")[0].split()
        for block in fenced(page, "bash")
        for line in block.splitlines()
        if "asgiserve run" in line
    ]
    assert len(commands) >= 5
    for argv in commands:
        args = make_parser().parse_args(["run", *argv])
        assert args.target
    configs = fenced(page, "yaml")
    assert configs
    for index, text in enumerate(configs):
        path = tmp_path / f"config{index}.yaml"
        path.write_text(text)
        config_file.load(path)


# -- checked before the server listens ----------------------------------------------------


def run_command(project: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command_line(*argv), cwd=project, capture_output=True, text=True, timeout=60,
        env={**os.environ, **env},
    )  # fmt: skip


def test_an_unknown_backend_in_the_environment_is_one_line(project: Path) -> None:
    done = run_command(project, "service:app", ASGISERVE_BACKEND="gpu")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "asgiserve run: error: $ASGISERVE_BACKEND names the backend 'gpu'; choose one of "
        "('inprocess', 'subprocess', 'ray')"
    ]


def test_the_ray_backend_without_ray_is_one_line(project: Path) -> None:
    script = (
        "import sys; sys.modules['ray'] = None; from asgiserve.cli import main; "
        "sys.exit(main(['run', 'service:app', '--backend', 'ray']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "asgiserve run: error: --backend asks for the ray backend, but Ray is not installed: "
        "pip install 'asgiserve[ray]' (or, in a checkout: pip install -e '.[ray]')"
    ]


@pytest.mark.parametrize("server", SERVERS)
def test_a_port_in_use_is_one_line_before_anything_deploys(project: Path, server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_command(project, "service:slow", "--port", str(port), "--server", server)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"asgiserve run: error: port {port} on 127.0.0.1 is already in use (another server?); "
        "stop it or choose another port with --port"
    ]


def test_a_file_path_target_says_which_form_and_app_dir_to_use(project: Path) -> None:
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    done = run_command(elsewhere, "../service.py:app")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "asgiserve run: error: '../service.py:app' is a file path, not module:attribute; give "
        "a module and an attribute, as in 'main:app'; for that file, run from its directory "
        "or add it: asgiserve run --app-dir .. service:app"
    ]
    with running(elsewhere, "service:app", "--app-dir", "..") as command:  # as it says
        command.wait_until_ready()
        assert httpx.get(f"{command.url}/").json()["tag"] == "model"
        assert command.stop() == 0


def test_progress_counts_each_deployment_of_an_application() -> None:
    @asgiserve.deployment(num_replicas=2)
    class Inner:
        pass

    @asgiserve.deployment
    class Outer:
        def __init__(self, inner: object) -> None:
            self.inner = inner

    try:
        asgiserve.run(Outer.bind(Inner.bind()), name="pair", route_prefix=None, backend="inprocess")
        (app,) = [app for app in registry.every_app() if app.name == "pair"]
        assert app.progress() == "pair: 3/3 replicas ready (Inner 2/2, Outer 1/1)"
    finally:
        asgiserve.shutdown()


@pytest.mark.parametrize("server", SERVERS)
def test_a_unix_socket_and_a_body_size_limit(project: Path, server: str) -> None:
    socket_path = str(project / "serve.sock")
    flags = ("--uds", socket_path, "--max-body-size", "10", "--server", server)
    with running(project, "service:app", *flags) as command:
        command.wait_for_line(f"Ready at unix:{socket_path}")
        transport = httpx.HTTPTransport(uds=socket_path)
        with httpx.Client(transport=transport, base_url="http://local", timeout=30) as client:
            assert client.get("/").json()["tag"] == "model"
            assert client.post("/", content=b"x" * 10).status_code == 200
            too_big = client.post("/", content=b"x" * 11)
            assert too_big.status_code == 413
            assert "10" in too_big.json()["detail"]
        assert command.stop() == 0


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("flags", "access", "info"),
    [
        ((), True, True),
        (("--no-access-log",), False, True),
        (("--log-level", "warning"), False, False),  # access lines are INFO
    ],
)
def test_log_level_and_access_log_reach_the_server(
    project: Path, server: str, flags: tuple[str, ...], access: bool, info: bool, tmp_path: Path
) -> None:
    port = free_port()
    argv = command_line("service:app", "--port", str(port), "--server", server, *flags)
    with (tmp_path / "out").open("w+") as out, (tmp_path / "err").open("w+") as err:
        process = subprocess.Popen(argv, cwd=project, stdout=out, stderr=err)
        try:
            wait_for_port(port, process, timeout=60)
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
            time.sleep(0.2)  # the access line is written after the response
        finally:
            process.terminate()
            process.wait(30)
        out.seek(0)
        err.seek(0)
        lines, errors = out.read(), err.read()
    assert ('"GET / HTTP/1.1" 200' in lines) is access, lines
    assert any(line in errors for line in ("Started server process", "Running on")) is info


# -- HTTPS, proxy headers ----------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, made with openssl."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.mark.parametrize("server", SERVERS)
def test_https_with_a_key_and_a_certificate(project: Path, server: str) -> None:
    import ssl

    if not shutil.which("openssl"):
        pytest.skip("openssl makes the test's certificate")
    key, cert = self_signed(project)
    flags = ("--server", server, "--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    with running(project, "service:app", *flags) as command:
        command.wait_for_line(rf"Ready at https://127.0.0.1:{command.port}$")
        trust = ssl.create_default_context(cafile=str(cert))
        answer = httpx.get(f"https://127.0.0.1:{command.port}/", verify=trust, timeout=30)
        assert answer.status_code == 200
        assert answer.json()["scheme"] == "https"
        assert command.stop() == 0


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("flags", "client", "scheme"),
    [
        ((), "10.1.2.3", "https"),  # from 127.0.0.1, trusted by default
        (("--no-proxy-headers",), "127.0.0.1", "http"),
        (("--forwarded-allow-ips", "10.9.9.9"), "127.0.0.1", "http"),  # not this proxy
        (("--forwarded-allow-ips", "*"), "10.1.2.3", "https"),
    ],
)
def test_proxy_headers(
    project: Path, server: str, flags: tuple[str, ...], client: str, scheme: str
) -> None:
    forwarded = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"}
    with running(project, "service:app", "--server", server, *flags) as command:
        command.wait_until_ready()
        seen = httpx.get(f"{command.url}/", headers=forwarded, timeout=30).json()
        assert (seen["client"], seen["scheme"]) == (client, scheme)
        assert command.stop() == 0


def test_http_options_in_a_config_file_reach_the_command(project: Path) -> None:
    """The new settings are `http_options` fields too, and the flags win over them."""
    (project / "serve.yaml").write_text(
        "http_options:\n  proxy_headers: false\n  forwarded_allow_ips: '*'\n"
        "  ssl_keyfile: key.pem\napplications:\n  - import_path: service:app\n"
    )
    config = config_file.load(project / "serve.yaml")
    http = config.http_options(proxy_headers=True)
    assert (http.proxy_headers, http.forwarded_allow_ips) == (True, "*")
    assert http.ssl_keyfile == "key.pem"
    done = run_command(project, "serve.yaml", "--port", str(free_port()))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "asgiserve run: error: --ssl-keyfile (http_options.ssl_keyfile) needs --ssl-certfile "
        "(http_options.ssl_certfile) too: give the key and the certificate, or neither"
    ]


# -- --reload ----------------------------------------------------------------------------

VERSIONED = """
import os

from starlette.responses import PlainTextResponse

import asgiserve


@asgiserve.deployment
def hello(request) -> PlainTextResponse:
    return PlainTextResponse(f"{VERSION} {os.getpid()}")


VERSION = "v1"
app = hello.bind()
"""


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_reload_restarts_the_server_on_a_change(project: Path, server: str) -> None:
    (project / "versioned.py").write_text(VERSIONED)
    with running(project, "versioned:app", "--server", server, "--reload") as command:
        command.wait_until_ready()
        version, first = httpx.get(f"{command.url}/", timeout=30).text.split()
        assert version == "v1"
        time.sleep(0.5)  # the watch has started
        (project / "versioned.py").write_text(VERSIONED.replace('"v1"', '"v2"'))
        deadline = time.monotonic() + 30
        answer = ""
        while not answer.startswith("v2") and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{command.url}/", timeout=30).text
            except httpx.TransportError:  # between the two servers
                pass
            time.sleep(0.1)
        assert answer.startswith("v2"), command.output
        second = answer.split()[1]
        assert second != first
        assert gone(int(first))  # the old server (and its replicas) stopped first
        assert command.stop() == 0
    assert gone(int(second))
    assert "versioned.py changed; restarting the server" in command.output
    assert "Traceback" not in command.output


def test_reload_watches_the_app_dir_the_config_file_and_its_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asgiserve.host import RunSpec
    from asgiserve.reload import watched

    for folder in ("app", "conf", "code/shared", "app/inner"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "code/shared/__init__.py").write_text("")
    (tmp_path / "code/shared/models.py").write_text("app = None\n")
    (tmp_path / "conf/serve.yaml").write_text(
        "applications:\n  - import_path: shared.models:app\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    target = str(tmp_path / "conf/serve.yaml")
    http = asgiserve.HTTPOptions(reload=True)
    spec = RunSpec(target=target, http=http, app_dir=str(tmp_path / "app"))
    folders = [str(tmp_path / name) for name in ("app", "code/shared", "conf")]
    assert watched(spec) == (folders, {target})
    http.reload_dirs = [str(tmp_path / "app/inner"), str(tmp_path / "app")]
    assert watched(spec) == ([str(tmp_path / "app")], {target})


# -- Ctrl-C while replicas start ---------------------------------------------------------


@pytest.mark.parametrize("second", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("backend", ["inprocess", "subprocess"])
@pytest.mark.parametrize("server", SERVERS)
def test_ctrl_c_while_replicas_start_stops_at_once(
    project: Path, server: str, backend: str, second: bool
) -> None:
    flags = ("--server", server, "--backend", backend)
    with running(project, "service:loading", *flags) as command:
        command.wait_for_line(r"^default: 0/2 replicas ready$")
        pids = project / "loading.pids"
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)  # a constructor is running
        started = time.monotonic()
        command.process.send_signal(signal.SIGINT)
        if second:
            time.sleep(0.05)
            command.process.send_signal(signal.SIGINT)
        code = command.wait(timeout=15)
        took = time.monotonic() - started
    assert code == 0, command.output
    assert took < 5, command.output
    assert "Traceback" not in command.output
    replicas = [int(pid) for pid in pids.read_text().split()]
    if backend == "subprocess":
        assert all(gone(pid, timeout=5) for pid in replicas)  # killed, not left to load
    elif not second:
        assert (
            "asgiserve: stopping; 2 replicas of 'Loading' (application 'default') are still "
            "starting in this process and are left to finish in a thread, which the exit does "
            "not wait for"
        ) in command.lines
