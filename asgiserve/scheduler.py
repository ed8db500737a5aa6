"""One scheduler per deployment: picks a replica, enforces the limits, queues the rest.

Backend-agnostic: it sees replicas only through `Replica.handle`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Send

from asgiserve.backends.base import Backend, Call, Replica, ReplicaSpec
from asgiserve.config import DeploymentConfig
from asgiserve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaDiedError
from asgiserve.loops import ignore_outcome, running_loop
from asgiserve.multiplex import Placement, models_per_replica

logger = logging.getLogger("asgiserve")

RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after 1, 2, 3 ... deaths in a row
CALM_AFTER_S = 60.0  # a replica that lived this long resets the back-off


def settle(future: concurrent.futures.Future[None], task: asyncio.Task[None]) -> None:
    """Copy a finished task's outcome into a thread-safe future."""
    if task.cancelled():
        future.set_exception(DeploymentUnavailableError("starting the replicas was cancelled"))
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(None)


@dataclass(eq=False)
class Slot:
    """A replica and the number of calls it is running now."""

    replica: Replica
    in_flight: int = 0
    started: bool = False
    dead: bool = False
    born: float = 0.0
    models: Placement | None = None  # the models it was last sent, when multiplexed
    report: Any = None  # what its last health check said (batch queues), for `status()`


class Scheduler:
    def __init__(
        self,
        app_name: str,
        config: DeploymentConfig,
        backend: Backend,
        make_spec: Callable[[str], ReplicaSpec],
    ) -> None:
        self.app_name = app_name
        self.config = config
        self.backend = backend
        self.make_spec = make_spec
        self.slots: list[Slot] = []
        self.waiters: deque[asyncio.Future[Slot]] = deque()
        # Handles may use one scheduler from several event loops (the server's, and the
        # background loop behind synchronous `.result()` calls): queueing is locked; the
        # common path, a free slot and nobody queued, is not, and re-checks after queueing.
        self.lock = threading.Lock()
        self.starting: concurrent.futures.Future[None] | None = None
        self.started = False
        self.closed = False
        self.replica_counter = 0
        self.generation = 0  # bumped by `stop`, so a late replacement knows it is not wanted
        self.deaths = 0
        self.health: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None
        self.background: set[asyncio.Future[None]] = set()
        self.model_limit = models_per_replica(make_spec("").target)  # 0: not multiplexed

    @property
    def name(self) -> str:
        return self.config.name

    def next_replica_id(self) -> str:
        self.replica_counter += 1
        return f"{self.app_name}#{self.config.name}#{self.replica_counter}"

    def start_replicas(self) -> None:
        """Build every replica now, so a failing constructor fails `run()` (blocking)."""
        missing = self.config.num_replicas - len(self.slots)
        specs = [self.make_spec(self.next_replica_id()) for _ in range(missing)]
        if not self.backend.starts_in_parallel or missing < 2:
            for spec in specs:
                self.add_slot(Slot(self.backend.start_replica(spec)))
            return
        with concurrent.futures.ThreadPoolExecutor(missing) as pool:
            starts = [pool.submit(self.backend.start_replica, spec) for spec in specs]
            for start in concurrent.futures.as_completed(starts):  # each counts as it is up
                if start.exception() is None:
                    self.add_slot(Slot(start.result()))
        for start in starts:
            error = start.exception()
            if error is not None:
                raise error

    def add_slot(self, slot: Slot) -> None:
        with self.lock:
            self.slots = [*self.slots, slot]

    async def ensure_started(self) -> None:
        """Replicas start on first use (and on the router's lifespan startup), once.

        Callers on any event loop wait for the one start, so `starting` is a thread-safe
        future; it is marked running so that no single caller's cancellation cancels it.
        """
        if self.closed:
            raise DeploymentUnavailableError(
                f"deployment {self.name!r} of application {self.app_name!r} was deleted"
            )
        with self.lock:
            starting = self.starting
            if starting is None or (starting.done() and starting.exception() is not None):
                starting = self.starting = concurrent.futures.Future()
                starting.set_running_or_notify_cancel()
                asyncio.ensure_future(self.start()).add_done_callback(
                    functools.partial(settle, starting)
                )
        await asyncio.wrap_future(starting)
        self.started = True

    async def start(self) -> None:
        if not self.slots:
            await asyncio.to_thread(self.start_replicas)  # after a stop: build them again
        now = asyncio.get_running_loop().time()
        for slot in self.slots:
            if not slot.started:
                await slot.replica.start()
                slot.started = True
                slot.born = now
        if self.health is None:
            loop = asyncio.get_running_loop()
            self.health = (loop, loop.create_task(self.check_health()))

    def pick(self) -> Slot | None:
        """Power of two choices on in-flight counts; None when every replica is full."""
        slots = self.slots
        limit = self.config.max_ongoing_requests
        if len(slots) == 1:
            best = slots[0]
        elif not slots:
            return None  # every replica died; replacements are starting
        else:
            first, second = random.sample(slots, 2)
            best = first if first.in_flight <= second.in_flight else second
            if best.in_flight >= limit:
                best = min(slots, key=lambda slot: slot.in_flight)
        return best if best.in_flight < limit else None

    def pick_for(self, model_id: str) -> Slot | None:
        """A replica that holds the model and has room, the least loaded; else, if none
        holds it, the least loaded with room for another model (which then loads it). A
        model whose replicas are full waits for one of them rather than load elsewhere."""
        limit = self.config.max_ongoing_requests
        holders = [slot for slot in self.slots if slot.models and slot.models.holds(model_id)]
        if holders:
            free = [slot for slot in holders if slot.in_flight < limit]
            return min(free, key=lambda slot: slot.in_flight) if free else None
        free = [slot for slot in self.slots if slot.in_flight < limit]
        if not free:
            return None
        return min(free, key=lambda s: (s.models is not None and s.models.full(), s.in_flight))

    def sent_model(self, slot: Slot, model_id: str) -> None:
        if slot.models is None:
            slot.models = Placement(self.model_limit)
        slot.models.sent(model_id)

    async def wait_for_slot(self, model_id: str = "") -> Slot:
        with self.lock:
            slot = self.pick_for(model_id) if model_id else self.pick()
            if slot is not None:
                slot.in_flight += 1
                return slot
            limit = self.config.queue_limit
            if limit != -1 and len(self.waiters) >= limit:
                raise BackPressureError(
                    f"deployment {self.name!r} has {len(self.waiters)} requests queued, "
                    f"its limit ({self.config.queue_rule}); try again later"
                )
            waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
        if self.take_back_if_free(waiter):
            return waiter.result()
        try:
            return await waiter  # handed over with its in-flight count already taken
        except asyncio.CancelledError:
            with self.lock:
                queued = waiter in self.waiters
                if queued:
                    self.waiters.remove(waiter)  # still queued: dropped, never run
            if not queued and waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise

    def release(self, slot: Slot) -> None:
        """Hand the slot to the longest waiter, on that waiter's own event loop."""
        if not self.waiters or slot.dead:
            slot.in_flight -= 1
            if not self.waiters or slot.dead:
                return
            slot.in_flight += 1  # a waiter queued meanwhile: hand it this slot below
        self.hand_to_waiter(slot)

    def hand_to_waiter(self, slot: Slot) -> None:
        """Give one unit of `slot`'s capacity, already counted in `in_flight`, to a waiter."""
        with self.lock:
            while self.waiters:
                waiter = self.waiters.popleft()
                if waiter.done():
                    continue
                loop = waiter.get_loop()
                if loop is running_loop():
                    waiter.set_result(slot)
                    return
                try:  # a handle's synchronous caller waits on the background loop
                    loop.call_soon_threadsafe(self.hand_over, waiter, slot)
                    return
                except RuntimeError:  # that loop has closed
                    continue
            slot.in_flight -= 1

    def take_back_if_free(self, waiter: asyncio.Future[Slot]) -> bool:
        """Close the race with a lock-free `release` that saw no waiter just before we queued."""
        with self.lock:
            if waiter not in self.waiters:
                return False
            slot = self.pick()
            if slot is None:
                return False
            self.waiters.remove(waiter)
            slot.in_flight += 1
            waiter.set_result(slot)
            return True

    def hand_over(self, waiter: asyncio.Future[Slot], slot: Slot) -> None:
        if waiter.done():  # cancelled while the slot was on its way
            self.release(slot)
        else:
            waiter.set_result(slot)

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        if not self.started:
            await self.ensure_started()
        while True:
            # A free replica and nobody queued first: the common case, taken without the lock.
            model_id = call.model_id if self.model_limit else ""
            if self.waiters:
                slot = None
            else:
                slot = self.pick_for(model_id) if model_id else self.pick()
            if slot is None:
                slot = await self.wait_for_slot(model_id)
            else:
                slot.in_flight += 1
            if model_id:
                self.sent_model(slot, model_id)
            call.replica_id = slot.replica.replica_id
            try:
                await slot.replica.handle(call, receive, send)
                return
            except ReplicaDiedError as exc:
                self.lost(slot, exc)
                if exc.sent:
                    raise  # it may have run: only the caller can decide to try again
            finally:
                self.release(slot)

    # -- failure -----------------------------------------------------------------------

    def lost(self, slot: Slot, reason: BaseException, answering: bool = True) -> None:
        """Take a dead or unhealthy replica out of rotation and start its replacement.

        One that still answers is stopped gracefully; one that does not, at once.
        """
        if slot.dead or self.closed:
            return
        slot.dead = True
        with self.lock:
            self.slots = [other for other in self.slots if other is not slot]
        logger.warning(
            "replica %s of %r is lost (%s); starting a replacement",
            slot.replica.replica_id, self.name, reason,
        )  # fmt: skip
        task = asyncio.ensure_future(self.replace(slot, answering))
        self.background.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.background.discard)

    async def replace(self, old: Slot, answering: bool = True) -> None:
        loop = asyncio.get_running_loop()
        generation = self.generation
        self.deaths = 1 if loop.time() - old.born > CALM_AFTER_S else self.deaths + 1
        delay = RESTART_BACKOFF_S[min(self.deaths, len(RESTART_BACKOFF_S)) - 1]
        grace = self.config.graceful_shutdown_timeout_s if answering else 0
        stopping = asyncio.ensure_future(old.replica.stop(grace))
        while generation == self.generation:
            await asyncio.sleep(delay)
            try:
                replica = await asyncio.to_thread(
                    self.backend.start_replica, self.make_spec(self.next_replica_id())
                )
                await replica.start()
            except Exception:
                delay = min(max(delay * 2, RESTART_BACKOFF_S[1]), RESTART_BACKOFF_S[-1])
                logger.exception("restarting a replica of %r failed; retrying in %.1fs",
                                 self.name, delay)  # fmt: skip
                continue
            if generation != self.generation:  # stopped meanwhile
                await replica.stop(0)
                break
            slot = Slot(replica, started=True, born=loop.time())
            self.add_slot(slot)
            while self.waiters and slot.in_flight < self.config.max_ongoing_requests:
                slot.in_flight += 1
                self.hand_to_waiter(slot)
            break
        await stopping

    async def check_health(self) -> None:
        """Every `health_check_period_s`, replace replicas whose check fails or hangs.

        The checks run side by side and are not awaited past the timeout: a replica that
        does not answer (a stopped process, a blocked event loop) may never answer its
        cancel either. It is killed at once, which ends its check and its calls.
        """
        period = self.config.health_check_period_s
        timeout = self.config.health_check_timeout_s
        while True:
            await asyncio.sleep(period)
            checks = {
                asyncio.ensure_future(slot.replica.check_health()): slot
                for slot in list(self.slots)
            }
            if not checks:
                continue
            done, hung = await asyncio.wait(checks, timeout=timeout)
            for check in done:
                if check.exception() is not None:
                    self.lost(checks[check], check.exception())  # type: ignore[arg-type]
                else:
                    checks[check].report = check.result()
            for check in hung:
                check.add_done_callback(ignore_outcome)
                reason = TimeoutError(f"check_health did not answer within {timeout}s")
                self.lost(checks[check], reason, answering=False)

    async def stop(self) -> None:
        """Stop the replicas; a later call starts new ones."""
        slots, self.slots = self.slots, []
        self.started = False
        self.starting = None
        self.generation += 1
        if self.health is not None:
            loop, task = self.health
            self.health = None
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    DeploymentUnavailableError(f"deployment {self.name!r} is shutting down")
                )
        timeout = self.config.graceful_shutdown_timeout_s
        await asyncio.gather(
            *(slot.replica.stop(timeout) for slot in slots),
            return_exceptions=True,
        )

    async def close(self) -> None:
        """Stop for good: the deployment was deleted."""
        self.closed = True
        await self.stop()

    def status(self) -> dict[str, Any]:
        return {
            "status": "DELETED" if self.closed else "HEALTHY" if self.slots else "STOPPED",
            "backend": self.backend.name,
            "num_replicas": self.config.num_replicas,
            "queued": len(self.waiters),
            "replicas": [
                {
                    "replica_id": slot.replica.replica_id,
                    "state": "RUNNING" if slot.started else "STARTING",
                    "in_flight": slot.in_flight,
                    **(slot.report or {}),
                }
                for slot in self.slots
            ],
        }
