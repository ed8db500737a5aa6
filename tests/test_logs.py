"""Log lines: time, level and the request's fields, as text or JSON, from the server and
from replicas in worker processes and actors; `LoggingConfig` per deployment."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

import asgiserve
from asgiserve import logs
from asgiserve.router import Router
from tests.servers import free_port
from tests.test_faults import eventually
from tests.test_hosting import LOG_PREFIX, command_line, running

LOGGED_APP = """
import logging
import os
import re
import signal
import asgiserve

log = logging.getLogger("mine")

@asgiserve.deployment(logging_config={"encoding": "JSON", "log_level": "DEBUG"})
def logged() -> str:
    log.debug("a line from the replica")
    print("a plain print")
    return "logged"

@asgiserve.deployment(logging_config=asgiserve.LoggingConfig(enable_access_log=False))
def silent() -> str:
    return "silent"

@asgiserve.deployment
def talkative() -> str:
    log.info("said in-process")
    return "talked"

app = logged.bind()
quiet = silent.bind()
talk = talkative.bind()
"""


def test_logging_config_is_checked_where_it_is_given() -> None:
    assert asgiserve.LoggingConfig(encoding="json", log_level="debug").encoding == "JSON"
    with pytest.raises(ValueError, match="TEXT or JSON"):
        asgiserve.LoggingConfig(encoding="XML")
    with pytest.raises(ValueError, match="log_level"):
        asgiserve.deployment(logging_config={"log_level": "LOUD"})(lambda: 1)
    with pytest.raises(ValueError, match="no option 'colour'"):
        asgiserve.deployment(logging_config={"colour": "red"})(lambda: 1)


def test_a_replicas_own_lines_carry_its_request() -> None:
    """The handler's filter puts the request's fields on any logger's records."""
    stream = io.StringIO()
    mine = logging.getLogger("tests.mine")
    mine.addHandler(logs.handler("JSON", stream))
    mine.setLevel(logging.INFO)

    @asgiserve.deployment
    def talk() -> str:
        mine.info("working on it")
        return asgiserve.get_request_context().request_id

    try:
        handle = asgiserve.run(talk.bind(), name="talk", route_prefix=None)
        request_id = handle.remote().result()
        mine.info("outside any request")
    finally:
        mine.handlers.clear()
        asgiserve.delete("talk")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "working on it" and inside["level"] == "INFO"
    assert inside["request_id"] == request_id
    assert (inside["application"], inside["deployment"]) == ("talk", "talk")
    assert inside["replica"] == "talk#talk#1" and "time" in inside
    assert "request_id" not in outside


@pytest.mark.anyio
async def test_enable_access_log_false_drops_the_deployments_access_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @asgiserve.deployment(logging_config={"enable_access_log": False})
    def quiet() -> str:
        return "quiet"

    @asgiserve.deployment
    def loud() -> str:
        return "loud"

    router = Router()
    asgiserve.run(quiet.bind(), name="quiet", route_prefix="/quiet", router=router)
    asgiserve.run(loud.bind(), name="loud", route_prefix="/loud", router=router)
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    transport = httpx.ASGITransport(app=router)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/quiet")).status_code == 200
            assert (await client.get("/loud")).status_code == 200
    finally:
        asgiserve.delete("quiet")
        asgiserve.delete("loud")
    lines = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert [r.getMessage().split()[0] for r in lines] == ["loud"]
    assert getattr(lines[0], "application", None) == "loud"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "logged.py").write_text(textwrap.dedent(LOGGED_APP))
    return tmp_path


def test_json_lines_from_the_server_and_its_workers(project: Path) -> None:
    backend = "subprocess"
    port = free_port()
    argv = command_line("logged:app", "--port", str(port), "--log-format", "json",
                        "--backend", backend)  # fmt: skip
    out, err = project / "out", project / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(argv, cwd=project, stdout=stdout, stderr=stderr)
        try:
            eventually(lambda: ready(port), "the server ready", timeout_s=90)
            response = httpx.get(f"http://127.0.0.1:{port}/")
            assert response.text == "logged"
            request_id = response.headers["x-request-id"]
            # Worker output reaches the server's stderr on a thread of its own.
            eventually(lambda: "a line from the replica" in err.read_text(), "the replica's line",
                       timeout_s=30)  # fmt: skip
        finally:
            process.terminate()
            assert process.wait(60) == 0
    errors = [line for line in err.read_text().splitlines() if line.strip()]
    replica_lines = [line for line in errors if "a line from the replica" in line]
    assert len(replica_lines) == 1
    # JSON stays JSON: the worker's line as it wrote it (Ray puts its mark in front).
    line = json.loads(replica_lines[0])
    assert line["level"] == "DEBUG" and line["logger"] == "mine"
    assert line["request_id"] == request_id and line["deployment"] == "logged"
    assert any("a plain print" in line for line in errors)  # output that is not logging
    server_lines = [line for line in errors if "a plain print" not in line]
    for found in server_lines:  # the server's own lines: every one a JSON object
        parsed = json.loads(found)
        assert {"time", "level", "logger", "message"} <= set(parsed), found
    assert any("Ready at" in json.loads(found)["message"] for found in server_lines)
    access = [json.loads(found) for found in out.read_text().splitlines() if found.strip()]
    mine = [found for found in access if found["logger"] == logs.ACCESS_LOGGER]
    assert mine and mine[0]["request_id"] == request_id and mine[0]["replica"]
    assert any(found["logger"] == "uvicorn.access" for found in access)


log = logging.getLogger("tests.replica")


@asgiserve.deployment(logging_config={"encoding": "JSON"})
class JSONLogged:
    def __call__(self) -> str:
        log.info("json from an actor")
        return asgiserve.get_request_context().request_id


def test_an_actors_json_lines_stay_json(backend: str, capfd: pytest.CaptureFixture[str]) -> None:
    """Ray forwards an actor's output to the driver, its mark in front of each line."""
    if backend != "ray":
        pytest.skip("Ray actors' output")
    handle = asgiserve.run(JSONLogged.bind(), name="json-actor", route_prefix=None)
    request_id = handle.remote().result()
    seen: list[str] = []

    def arrived() -> list[str]:
        seen.extend(capfd.readouterr().err.splitlines())
        return [line for line in seen if "json from an actor" in line]

    found = eventually(arrived, "the actor's line at the driver", timeout_s=30)
    line = json.loads(found[0][found[0].index("{"):])
    assert line["request_id"] == request_id and line["deployment"] == "JSONLogged"
    assert line["level"] == "INFO" and line["logger"] == "tests.replica"


@pytest.mark.slow
def test_a_local_ray_started_by_the_command_forwards_its_actors_lines(project: Path) -> None:
    """`asgiserve run --backend ray` with no cluster starts Ray from its deploy thread; Ray
    must outlive that thread (its daemons die with the thread that started them)."""
    pytest.importorskip("ray")
    port = free_port()
    argv = command_line("logged:app", "--port", str(port), "--backend", "ray")
    err = project / "err"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with err.open("w") as stderr:
        process = subprocess.Popen(argv, cwd=project, stdout=subprocess.DEVNULL,
                                   stderr=stderr, env=env)  # fmt: skip
        try:
            eventually(lambda: ready(port), "the server ready", timeout_s=120)
            for _ in range(3):
                assert httpx.get(f"http://127.0.0.1:{port}/").text == "logged"
            eventually(lambda: err.read_text().count("a line from the replica") == 3,
                       "the actor's lines at the server", timeout_s=30)  # fmt: skip
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    assert "Finished server process" in err.read_text()  # a graceful stop, not a kill


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/-/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_in_process_replicas_own_lines_have_the_same_fields(project: Path) -> None:
    """On the default backend too, the app's `logging` calls get asgiserve's format."""
    with running(project, "logged:talk") as command:
        command.wait_until_ready()
        response = httpx.get(command.url)
        assert response.text == "talked"
        command.wait_for_line("said in-process")
        assert command.stop() == 0
    said = [line for line in command.raw if "said in-process" in line]
    request_id = response.headers["x-request-id"]
    assert len(said) == 1 and LOG_PREFIX.match(said[0]), said
    assert f"[default talkative default#talkative#1 {request_id}] said in-process" in said[0]


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_text_lines_have_a_time_and_a_level(project: Path, server: str) -> None:
    with running(project, "logged:quiet", "--server", server) as command:
        command.wait_until_ready()
        response = httpx.get(command.url)
        assert response.text == "silent"
        time.sleep(0.2)  # the server's access line follows the response
        assert command.stop() == 0
    ready_lines = [line for line in command.raw if "Ready at" in line]
    assert ready_lines and LOG_PREFIX.match(ready_lines[0]), ready_lines
    assert " INFO asgiserve " in ready_lines[0]


model_log = logging.getLogger("model")


@asgiserve.deployment
class Model:
    """The deployment of docs/backends.md's log samples."""

    def __init__(self) -> None:
        model_log.info("loaded weights")

    def __call__(self) -> str:
        model_log.info("predicting")
        return "ok"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sample_pattern(sample: str) -> re.Pattern[str]:
    """A docs log sample as a pattern: its time, pid and request id stand for any."""
    variable = {
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}": r"[\d-]+ [\d:]+,\d{3}",
        r"4242": r"\d+",  # the pid
        r"[0-9a-f]{32}": r"[0-9a-f]{32}",
    }
    pieces = re.split("(" + "|".join(variable) + ")", sample)
    pattern = ""
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            pattern += re.escape(piece)
        else:
            pattern += next(v for k, v in variable.items() if re.fullmatch(k, piece))
    return re.compile(pattern)


def test_the_docs_log_samples_are_what_workers_print(
    backend: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if backend == "inprocess":
        pytest.skip("in-process replicas log through the server's own set-up")
    docs = (Path(__file__).parent.parent / "docs" / "backends.md").read_text()
    samples = re.findall(r"^\s*`?(\(Model replica .*?)`?\.?$", docs, flags=re.M)
    mark = "(pid " if backend == "subprocess" else "pid="
    mine = [sample for sample in samples if mark in sample]
    assert mine, f"docs/backends.md shows no {backend} log sample"
    handle = asgiserve.run(Model.bind(), name="model", route_prefix=None)
    assert handle.remote().result() == "ok"
    seen: list[str] = []

    def all_shown() -> bool:
        seen.extend(ANSI.sub("", line) for line in capfd.readouterr().err.splitlines())
        return all(any(sample_pattern(s).fullmatch(line) for line in seen) for s in mine)

    eventually(all_shown, f"lines like {mine} among what the workers printed", timeout_s=30)
