"""One autoscaling decision for servers that share a deployment's Ray actors.

Servers that deploy the same code under the same application name on one cluster share
its actors (see `ray.py`), so they must agree on how many there are. Each reports its
load (running plus queued calls) ten times a second to a board: a named actor per
deployment and version, made by whichever server asks first. The board sums the reports
that are fresh, feeds the total to the one `Policy` it holds and answers every server
with the agreed replica count, which each then applies to its own scheduler. Replicas
are numbered from 1 and scaled by the lowest free numbers and down from the highest, so
every server reaches the same actors. If the board's actor dies with the server that made
it, the next report makes a new one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import ray
from ray.exceptions import RayActorError

from asgiserve.autoscaling import AutoscalingConfig, Policy

STALE_S = 1.0  # a server that has not reported for this long no longer counts


class Board:
    """The actor: every sharing server's latest load, and the count they agree on."""

    def __init__(self, config: AutoscalingConfig, current: int) -> None:
        self.policy = Policy(config)
        self.current = current
        self.loads: dict[str, tuple[float, float, bool]] = {}

    def report(
        self, server: str, load: float, waiting: bool, config: AutoscalingConfig
    ) -> tuple[int, dict[str, Any] | None]:
        now = time.monotonic()
        if config != self.policy.config:  # an update in place changed it
            self.policy = Policy(config)
        self.loads[server] = (now, load, waiting)
        fresh = [report for report in self.loads.values() if now - report[0] < STALE_S]
        total = sum(report[1] for report in fresh)
        asked = self.policy.decide(now, total, self.current, any(r[2] for r in fresh))
        if asked is not None:
            self.current = asked
        return self.current, self.policy.decision


class RayDecider:
    """A server's side of the board (`autoscaling.Decider`)."""

    def __init__(self, name: str, namespace: str, config: AutoscalingConfig) -> None:
        self.name = name
        self.namespace = namespace
        self.config = config
        self.server = uuid.uuid4().hex
        self.board: Any = None
        self.decision: dict[str, Any] | None = None

    def connect(self, current: int) -> Any:
        if self.board is None:
            board_class = ray.remote(num_cpus=0)(Board)
            self.board = board_class.options(
                name=self.name, namespace=self.namespace, get_if_exists=True
            ).remote(self.config, current)
        return self.board

    async def decide(self, load: float, current: int, waiting: bool) -> int | None:
        board = self.connect(current)
        try:
            agreed, self.decision = await board.report.remote(
                self.server, load, waiting, self.config
            )
        except RayActorError:
            self.board = None  # gone with the server that made it: the next call makes one
            raise
        return agreed if agreed != current else None

    def last_decision(self) -> dict[str, Any] | None:
        return self.decision
