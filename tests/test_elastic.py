"""Elastic deployments on every backend: updates in place, `user_config`, rolling updates
under load, autoscaling, scale to zero."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

import asgiserve
from asgiserve import AutoscalingConfig
from asgiserve.autoscaling import wanted
from asgiserve.config import DeploymentConfig
from tests.servers import SERVERS, free_port
from tests.test_faults import eventually
from tests.test_hosting import running


def deployment_status(app: str, name: str) -> dict[str, Any]:
    return asgiserve.status()["applications"][app]["deployments"][name]  # type: ignore[no-any-return]


def every_replica(handle: asgiserve.DeploymentHandle, count: int) -> dict[str, Any]:
    """What `handle.remote()` answers, by replica id, once `count` replicas have answered."""
    seen: dict[str, Any] = {}
    for _ in range(200):
        replica_id, value = handle.remote().result(timeout_s=30)
        seen[replica_id] = value
        if len(seen) >= count:
            return seen
    raise AssertionError(f"only {sorted(seen)} answered; expected {count} replicas")


@asgiserve.deployment(num_replicas=2, user_config={"greeting": "hello"})
class Configured:
    def __init__(self) -> None:
        self.configs: list[Any] = []

    def reconfigure(self, config: dict[str, Any]) -> None:
        if config.get("fail"):
            raise ValueError("this config is refused")
        self.configs.append(config["greeting"])

    def __call__(self) -> tuple[str, tuple[int, list[Any]]]:
        replica = asgiserve.get_request_context().replica_id
        return replica, (os.getpid(), self.configs)


def test_user_config_reaches_every_replica_without_a_restart(backend: str) -> None:
    handle = asgiserve.run(Configured.bind(), name="configured", route_prefix=None)
    before = every_replica(handle, 2)
    assert all(configs == ["hello"] for _, configs in before.values())

    asgiserve.run(
        Configured.options(user_config={"greeting": "hi"}).bind(),
        name="configured",
        route_prefix=None,
    )
    after = every_replica(handle, 2)
    assert sorted(after) == sorted(before)  # the same replicas
    for replica_id, (pid, configs) in after.items():
        assert pid == before[replica_id][0]  # the same processes
        assert configs == ["hello", "hi"]


def test_a_reconfigure_that_raises_fails_the_update_and_keeps_the_config(backend: str) -> None:
    handle = asgiserve.run(Configured.bind(), name="refused", route_prefix=None)
    with pytest.raises(ValueError, match="this config is refused"):
        asgiserve.run(
            Configured.options(user_config={"fail": True}).bind(), name="refused", route_prefix=None
        )
    after = every_replica(handle, 2)
    # The replica that took the refused config first got the old one back.
    assert all(configs[-1] == "hello" for _, configs in after.values())
    status = deployment_status("refused", "Configured")
    assert status["running_replicas"] == 2


def test_a_user_config_needs_reconfigure() -> None:
    @asgiserve.deployment(user_config={"a": 1})
    class Plain:
        def __call__(self) -> int:
            return 1

    with pytest.raises(TypeError, match="has a user_config but no reconfigure"):
        asgiserve.run(Plain.bind(), name="plain", route_prefix=None, backend="inprocess")
    asgiserve.shutdown()


@asgiserve.deployment
class Counted:
    def __call__(self) -> tuple[str, int]:
        return asgiserve.get_request_context().replica_id, os.getpid()


def test_num_replicas_changes_live_and_keeps_the_replicas(backend: str) -> None:
    handle = asgiserve.run(Counted.bind(), name="counted", route_prefix=None)
    first = every_replica(handle, 1)
    asgiserve.run(Counted.options(num_replicas=3).bind(), name="counted", route_prefix=None)
    three = every_replica(handle, 3)
    assert set(first) <= set(three)
    asgiserve.run(Counted.options(num_replicas=1).bind(), name="counted", route_prefix=None)
    status = eventually(
        lambda: (s := deployment_status("counted", "Counted"))["draining_replicas"] == 0 and s,
        "the two replicas taken away drained",
    )
    assert (status["target_replicas"], status["running_replicas"]) == (1, 1)


@asgiserve.deployment(name="Versioned", num_replicas=2, max_ongoing_requests=8)
class VersionOne:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.01)
        return "one"


@asgiserve.deployment(name="Versioned", num_replicas=2, max_ongoing_requests=8)
class VersionTwo:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.01)
        return "two"


class Load:
    """Clients sending requests one after another until stopped; every answer counted."""

    def __init__(self, url: str, clients: int = 8) -> None:
        self.url = url
        self.answers: Counter[tuple[int, str]] = Counter()
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.is_set():
                try:
                    response = client.get(self.url)
                    self.answers[(response.status_code, response.text)] += 1
                except httpx.HTTPError as exc:
                    self.errors.append(exc)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def test_new_code_rolls_without_a_failed_request(http: httpx.Client, backend: str) -> None:
    asgiserve.run(VersionOne.bind(), name="rolling", route_prefix="/rolling")
    assert http.get("/rolling").text == "one"
    load = Load(f"{http.base_url}/rolling")
    try:
        time.sleep(0.5)
        asgiserve.run(VersionTwo.bind(), name="rolling", route_prefix="/rolling")
        time.sleep(0.5)
    finally:
        load.stop()
    assert not load.errors
    statuses = Counter(status for status, _ in load.answers.elements())
    assert set(statuses) == {200}, load.answers
    assert {text for _, text in load.answers} == {"one", "two"}
    assert http.get("/rolling").text == "two"
    assert http.get("/-/healthz").status_code == 200


@asgiserve.deployment(name="Versioned")
class Broken:
    def __init__(self) -> None:
        raise RuntimeError("the new version cannot start")


def test_a_new_version_that_cannot_start_leaves_the_old_one(
    http: httpx.Client, backend: str
) -> None:
    asgiserve.run(VersionOne.bind(), name="kept", route_prefix="/kept")
    with pytest.raises(Exception, match="the new version cannot start"):
        asgiserve.run(Broken.bind(), name="kept", route_prefix="/kept")
    assert http.get("/kept").text == "one"
    assert deployment_status("kept", "Versioned")["running_replicas"] == 2


FAST_SCALING = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 0.2,
    "downscale_delay_s": 0.5,
    "look_back_period_s": 0.3,
}


@asgiserve.deployment(max_ongoing_requests=8, autoscaling_config=FAST_SCALING)
class Elastic:
    async def __call__(self) -> str:
        await asyncio.sleep(0.05)
        return asgiserve.get_request_context().replica_id


def test_autoscaling_follows_a_load_step(backend: str) -> None:
    handle = asgiserve.run(Elastic.bind(), name="elastic", route_prefix=None)
    handle.remote().result(timeout_s=30)
    assert deployment_status("elastic", "Elastic")["target_replicas"] == 1

    async def load(seconds: float) -> set[str]:
        """Until every replica the load calls for has served, or `seconds` (a busy machine
        starts Ray actors slowly)."""
        served: set[str] = set()
        end = time.monotonic() + seconds

        async def one() -> None:
            while time.monotonic() < end and len(served) < 4:
                served.add(await handle.remote())

        await asyncio.gather(*(one() for _ in range(32)))
        return served

    served = asyncio.run(load(20.0))
    assert len(served) == 4, served  # every replica took requests
    up = deployment_status("elastic", "Elastic")
    assert up["autoscaling"]["last_decision"]["to"] == 4
    down = eventually(
        lambda: (s := deployment_status("elastic", "Elastic"))["running_replicas"] == 1 and s,
        "scaled back to min_replicas once the load ended",
    )
    assert down["target_replicas"] == 1
    assert "average load" in down["autoscaling"]["last_decision"]["reason"]


@asgiserve.deployment(
    autoscaling_config={**FAST_SCALING, "min_replicas": 0, "downscale_delay_s": 0.3}
)
class Sleepy:
    def __call__(self, request: Request) -> str:
        return "awake"


def test_scale_to_zero_and_back(http: httpx.Client, backend: str) -> None:
    asgiserve.run(Sleepy.bind(), name="sleepy", route_prefix="/sleepy")
    assert deployment_status("sleepy", "Sleepy")["target_replicas"] == 0  # starts at min
    assert http.get("/sleepy").text == "awake"  # waits for a first replica
    assert deployment_status("sleepy", "Sleepy")["running_replicas"] == 1
    eventually(
        lambda: deployment_status("sleepy", "Sleepy")["running_replicas"] == 0,
        "scaled to zero once idle",
    )
    assert http.get("/-/healthz").status_code == 200  # at zero on purpose is healthy
    assert http.get("/sleepy").text == "awake"


def test_autoscaling_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"min_replicas \(3\) is above max_replicas \(2\)"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="unknown field"):
        DeploymentConfig("d", autoscaling_config={"max_replica": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_ongoing_requests must be above 0"):
        asgiserve.deployment(autoscaling_config={"target_ongoing_requests": 0})(Counted.target)
    with pytest.raises(ValueError, match="both set"):
        DeploymentConfig("d", num_replicas=2, autoscaling_config=AutoscalingConfig())
    auto = DeploymentConfig("d", num_replicas="auto").autoscaling_config
    assert auto is not None
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 100, 2)
    mine = DeploymentConfig("d", num_replicas="auto", autoscaling_config={"max_replicas": 1})
    assert mine.autoscaling_config is not None and mine.autoscaling_config.max_replicas == 1
    with pytest.raises(TypeError, match="user_config must be JSON-able"):
        DeploymentConfig("d", user_config={"f": object()})


SPEAKER = """
import os

import asgiserve


@asgiserve.deployment(user_config={"word": "one"})
class Speaker:
    def reconfigure(self, config):
        self.word = config["word"]

    def __call__(self, request):
        return {"word": self.word, "pid": os.getpid()}


app = Speaker.bind()
"""

SPEAKER_CONFIG = """\
http_options:
  port: {port}
applications:
  - name: speaker
    route_prefix: /speaker
    import_path: speaker:app
    backend: subprocess
    deployments:
      - name: Speaker
        user_config: {{word: {word}}}
{extra}"""

EXTRA = """\
  - name: extra
    route_prefix: /extra
    import_path: speaker:app
"""


@pytest.mark.parametrize("server", SERVERS)
def test_sighup_reloads_the_config_file(tmp_path: Path, server: str) -> None:
    port = free_port()
    (tmp_path / "speaker.py").write_text(SPEAKER)
    config = tmp_path / "serve.yaml"
    config.write_text(SPEAKER_CONFIG.format(port=port, word="two", extra=""))
    with running(tmp_path, "serve.yaml", "--server", server, port=port) as command, httpx.Client(
        base_url=command.url, timeout=30
    ) as client:
        command.wait_until_ready()
        first = client.get("/speaker").json()
        assert first["word"] == "two"

        def reload(expect: str) -> None:
            done = len([line for line in command.lines if "SIGHUP" in line])
            command.process.send_signal(signal.SIGHUP)
            eventually(
                lambda: len([line for line in command.lines if "SIGHUP" in line]) > done
                and re.search(expect, "\n".join(command.lines[-5:])),
                f"a line matching {expect!r} after SIGHUP:\n{command.output}",
                timeout_s=30,
            )

        config.write_text(SPEAKER_CONFIG.format(port=port, word="three", extra=EXTRA))
        reload("reloaded serve.yaml: extra, speaker")
        assert client.get("/speaker").json() == {"word": "three", "pid": first["pid"]}
        assert client.get("/extra").json()["word"] == "one"

        config.write_text(config.read_text().replace("user_config", "user_confg"))
        reload(r"serve.yaml, line \d+: .*user_confg: unknown field.*nothing was changed")
        assert client.get("/speaker").json() == {"word": "three", "pid": first["pid"]}

        config.write_text(SPEAKER_CONFIG.format(port=port, word="three", extra=EXTRA))
        extra = client.get("/extra").json()
        reload("reloaded serve.yaml: extra, speaker")  # unchanged: nothing restarts
        assert client.get("/speaker").json() == {"word": "three", "pid": first["pid"]}
        assert client.get("/extra").json() == extra

        config.write_text(SPEAKER_CONFIG.format(port=port, word="three", extra=""))
        reload("reloaded serve.yaml: speaker")
        assert client.get("/speaker").json() == {"word": "three", "pid": first["pid"]}
        assert client.get("/extra").status_code == 404
        assert command.stop() == 0


def test_the_wanted_count() -> None:
    config = AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=2)
    assert wanted(config, 1, 32) == 8  # capped at max_replicas
    assert wanted(config, 1, 5) == 3  # 2.5 per 2, rounded up on the way up
    assert wanted(config, 4, 3) == 1  # 1.5, rounded down on the way down
    assert wanted(config, 2, 4) == 2
    zero = AutoscalingConfig(min_replicas=0, max_replicas=8)
    assert wanted(zero, 4, 0) == 0
    assert wanted(zero, 4, 0.5) == 1  # never below one while anything runs
    assert wanted(zero, 0, 0.1) == 1
    assert wanted(zero, 0, 0) == 0
    cautious = AutoscalingConfig(max_replicas=8, upscaling_factor=0.5, downscaling_factor=0.5)
    assert wanted(cautious, 1, 10) == 3  # halfway from 1 to 5
    assert wanted(cautious, 5, 2) == 3  # halfway from 5 to 1


def test_the_shared_board_sums_every_servers_load() -> None:
    from asgiserve.autoscaling import Policy

    board_class = pytest.importorskip("asgiserve.backends.ray_board").Board
    config = AutoscalingConfig(max_replicas=8, upscale_delay_s=0, look_back_period_s=0)
    board = board_class(config, 1)
    assert board.report("a", 4, False, config)[0] == 2  # 4 calls at 2 a replica
    agreed, decision = board.report("b", 6, False, config)  # and 6 more elsewhere
    assert agreed == 5 and decision is not None and decision["to"] == 5
    assert isinstance(board.policy, Policy)
