"""Autoscaling: how many replicas a deployment's load asks for, and the loop that asks.

The load is what the scheduler sees: calls running on its replicas plus calls queued for
one. Every caller goes through it (HTTP requests, handles on any event loop, handles
inside other replicas, which come back through the server), so it is the deployment's
whole load in this server. Samples are taken every `SAMPLE_PERIOD_S` and averaged over
`look_back_period_s`; the wanted count is that average over `target_ongoing_requests`,
its change scaled by `upscaling_factor` or `downscaling_factor`, within
`min_replicas..max_replicas`. It applies once it has asked for more (or fewer) replicas
for `upscale_delay_s` (or `downscale_delay_s`) without a break. A deployment at zero with
a request waiting scales to one at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from asgiserve.scheduler import Scheduler

logger = logging.getLogger("asgiserve")

SAMPLE_PERIOD_S = 0.1
RETRY_AFTER_S = 1.0  # after a replica failed to start


@dataclass(frozen=True)
class AutoscalingConfig:
    """The autoscaler's settings; Ray Serve's names and defaults."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    look_back_period_s: float = 30.0
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"autoscaling_config: {message}")

        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"{name} must be an int >= 0: {value!r}")
        need(self.max_replicas >= 1, f"max_replicas must be at least 1, got {self.max_replicas}")
        need(
            self.min_replicas <= self.max_replicas,
            f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})",
        )
        if self.initial_replicas is not None:
            need(
                self.min_replicas <= self.initial_replicas <= self.max_replicas,
                f"initial_replicas ({self.initial_replicas}) must be between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})",
            )
        need(
            self.target_ongoing_requests > 0,
            f"target_ongoing_requests must be above 0, got {self.target_ongoing_requests}",
        )
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            value = getattr(self, name)
            need(value >= 0, f"{name} must be 0 or more, got {value}")
        if self.downscale_to_zero_delay_s is not None:
            need(self.downscale_to_zero_delay_s >= 0, "downscale_to_zero_delay_s must be >= 0")
        for name in ("upscaling_factor", "downscaling_factor"):
            value = getattr(self, name)
            need(value is None or value > 0, f"{name} must be above 0, got {value}")

    @classmethod
    def of(cls, value: AutoscalingConfig | dict[str, Any] | None) -> AutoscalingConfig | None:
        """A config from what `deployment(autoscaling_config=...)` was given."""
        if value is None or isinstance(value, AutoscalingConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(
                f"autoscaling_config must be a dict or asgiserve.AutoscalingConfig, got {value!r}"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(
                f"autoscaling_config: unknown field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**value)

    @property
    def initial(self) -> int:
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# `num_replicas="auto"`, as Ray Serve's.
AUTO = AutoscalingConfig(min_replicas=1, max_replicas=100, target_ongoing_requests=2.0)


def wanted(config: AutoscalingConfig, current: int, load: float) -> int:
    """The replica count an average `load` (running plus queued calls) asks for."""
    if current == 0:
        return max(1, config.min_replicas) if load > 0 else config.min_replicas
    ideal = load / config.target_ongoing_requests
    factor = config.upscaling_factor if ideal > current else config.downscaling_factor
    if factor is not None:
        ideal = current + (ideal - current) * factor
    count = math.ceil(ideal - 1e-9) if ideal > current else math.floor(ideal + 1e-9)
    if ideal < current and count < current and load > 0:
        count = max(count, 1)  # never below one while anything runs
    return max(config.min_replicas, min(config.max_replicas, count))


class Policy:
    """The decision, apart from any scheduler: fed one load sample at a time, it says when
    the replica count should change. Plain data, so a Ray actor can hold it for servers
    that share replicas."""

    def __init__(self, config: AutoscalingConfig) -> None:
        self.config = config
        self.samples: deque[tuple[float, float]] = deque()
        self.asking_since: float | None = None  # since when it asks for more, or fewer
        self.asking_up = False
        self.decision: dict[str, Any] | None = None  # the last one, for `status()`

    def average(self, now: float, load: float) -> float:
        self.samples.append((now, load))
        while self.samples and self.samples[0][0] < now - self.config.look_back_period_s:
            self.samples.popleft()
        return sum(sample for _, sample in self.samples) / len(self.samples)

    def delay(self, current: int, asked: int) -> float:
        if asked > current:
            return self.config.upscale_delay_s
        if asked == 0 and self.config.downscale_to_zero_delay_s is not None:
            return self.config.downscale_to_zero_delay_s
        return self.config.downscale_delay_s

    def decide(self, now: float, load: float, current: int, waiting: bool) -> int | None:
        """One sample (`waiting`: a call is queued); the new count when one is due."""
        average = self.average(now, load)
        if current == 0 and waiting:
            asked = max(1, self.config.min_replicas)  # a request waits for a first replica
            return self.note(current, asked, "a request arrived while at zero replicas")
        asked = wanted(self.config, current, average)
        if asked == current:
            self.asking_since = None
            return None
        up = asked > current
        if self.asking_since is None or up != self.asking_up:
            self.asking_since, self.asking_up = now, up  # the clock restarts on a turn
        if now - self.asking_since < self.delay(current, asked):
            return None
        self.asking_since = None
        reason = (
            f"average load {average:.2f} over {self.config.look_back_period_s:g}s for a "
            f"target of {self.config.target_ongoing_requests:g} per replica"
        )
        return self.note(current, asked, reason)

    def note(self, current: int, asked: int, reason: str) -> int:
        self.decision = {"from": current, "to": asked, "reason": reason, "at": time.time()}
        return asked


class Decider(Protocol):
    """Where a server's autoscaler takes its decisions: its own `Policy`, or, where
    servers share replicas, one they all report to."""

    async def decide(self, load: float, current: int, waiting: bool) -> int | None: ...

    def last_decision(self) -> dict[str, Any] | None: ...


class LocalDecider:
    """This server decides alone, from the load it sees."""

    def __init__(self, config: AutoscalingConfig) -> None:
        self.policy = Policy(config)

    async def decide(self, load: float, current: int, waiting: bool) -> int | None:
        return self.policy.decide(time.monotonic(), load, current, waiting)

    def last_decision(self) -> dict[str, Any] | None:
        return self.policy.decision


class Autoscaler:
    """Samples a scheduler's load and resizes it as its decider says; one task on the
    serving loop."""

    def __init__(self, scheduler: Scheduler, decider: Decider) -> None:
        self.scheduler = scheduler
        self.decider = decider
        self.wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def decision(self) -> dict[str, Any] | None:
        return self.decider.last_decision()

    def poke(self) -> None:
        """Decide now, not at the next sample (a request waits at zero replicas); from
        any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake.set)

    def load(self) -> int:
        scheduler = self.scheduler
        return sum(slot.in_flight for slot in scheduler.slots) + len(scheduler.waiters)

    async def step(self) -> int | None:
        """One sample; the new replica count when one is due, else None."""
        scheduler = self.scheduler
        current = scheduler.target
        asked = await self.decider.decide(self.load(), current, bool(scheduler.waiters))
        if asked is None or asked == current:
            return None
        decision = self.decision or {}
        logger.info(
            "autoscaling %r of %r from %d to %d replicas: %s",
            scheduler.name, scheduler.app_name, current, asked, decision.get("reason", ""),
        )  # fmt: skip
        return asked

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), SAMPLE_PERIOD_S)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                asked = await self.step()
            except Exception:  # a shared decider out of reach: ask again next time
                logger.exception("autoscaling %r: no decision", self.scheduler.name)
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            if asked is not None:
                try:
                    await self.scheduler.scale_to(asked)
                except Exception:
                    name = self.scheduler.name
                    logger.exception("autoscaling %r to %d replicas failed", name, asked)
                    self.scheduler.target = len(self.scheduler.slots)  # asked again later
                    await asyncio.sleep(RETRY_AFTER_S)
