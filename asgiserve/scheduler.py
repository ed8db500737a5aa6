"""One scheduler per deployment: picks a replica, enforces the limits, queues the rest.

Backend-agnostic: it sees replicas only through `Replica.handle`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Receive, Send

from asgiserve.autoscaling import Autoscaler, LocalDecider
from asgiserve.backends.base import Backend, Call, Replica, ReplicaSpec
from asgiserve.config import LIVE_OPTIONS, DeploymentConfig
from asgiserve.context import new_request_id
from asgiserve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaDiedError
from asgiserve.handle import never
from asgiserve.loops import ignore_outcome, on_loop, run_sync, running_loop, serving_loop
from asgiserve.multiplex import Placement, models_per_replica

logger = logging.getLogger("asgiserve")

RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after 1, 2, 3 ... deaths in a row
CALM_AFTER_S = 60.0  # a replica that lived this long resets the back-off
RETIRE_POLL_S = 0.02  # how often a replaced deployment looks whether it has drained


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


def replica_index(slot: Slot) -> int:
    """The number that ends a replica id (`app#Deployment#3`)."""
    tail = slot.replica.replica_id.rpartition("#")[2]
    return int(tail) if tail.isdigit() else 0


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
        self.target = config.initial_replicas  # replicas wanted now (the autoscaler's)
        self.starting_count = 0  # replicas being added by `scale_to`
        self.draining: list[Slot] = []  # out of rotation, finishing their calls
        self.autoscaler: Autoscaler | None = None
        self.shared = False  # its replica count is decided with other servers (Ray)
        self.scaling: asyncio.Lock | None = None  # on the serving loop, once started
        self.code: Any = None  # what tells a change of code (see `graph.code_of`)

    @property
    def name(self) -> str:
        return self.config.name

    def spec(self, replica_id: str = "") -> ReplicaSpec:
        """A replica's spec with the options as they are now (live updates change them)."""
        return dataclasses.replace(self.make_spec(replica_id), config=self.config)

    def spec_for(self, index: int) -> ReplicaSpec:
        """A spec for replica number `index` (scaling up reuses the lowest free numbers)."""
        self.replica_counter = max(self.replica_counter, index)
        return self.spec(f"{self.app_name}#{self.config.name}#{index}")

    def new_spec(self) -> ReplicaSpec:
        """A spec for a replica numbered past every one so far (a replacement's)."""
        return self.spec_for(self.replica_counter + 1)

    def start_replicas(self, at_once: int | None = None) -> None:
        """Build every replica now, so a failing constructor fails `run()` (blocking);
        `at_once` at a time (all, where the backend can) to spare the CPU the old version
        serves with during a roll."""
        missing = self.target - len(self.slots)
        specs = [self.new_spec() for _ in range(missing)]
        parallel = min(missing, at_once or missing) if self.backend.starts_in_parallel else 1
        if parallel < 2:
            for spec in specs:
                self.add_slot(Slot(self.backend.start_replica(spec)))
            return
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
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
            self.scaling = asyncio.Lock()
            self.start_autoscaler()

    def start_autoscaler(self) -> None:
        """On the serving loop (from any thread); again after `autoscaling_config` changes."""
        home = self.home_loop()
        if home is not None and home is not running_loop():
            home.call_soon_threadsafe(self.start_autoscaler)
            return
        if self.autoscaler is not None and self.autoscaler.task is not None:
            self.autoscaler.task.cancel()
        self.autoscaler = None
        scaling = self.config.autoscaling_config
        if scaling is not None and self.health is not None:
            shared = self.backend.shared_decider(self.spec())
            self.shared = shared is not None
            self.autoscaler = Autoscaler(self, shared or LocalDecider(scaling))
            self.autoscaler.task = self.health[0].create_task(self.autoscaler.run())

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
            waiter: asyncio.Future[Slot] = serving_loop().create_future()
            self.waiters.append(waiter)
        if not self.slots and self.autoscaler is not None:
            self.autoscaler.poke()  # at zero replicas: one starts for this request
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
        if self.waiters and not slot.dead:
            self.hand_to_waiter(slot)
        else:
            slot.in_flight -= 1
            self.recheck(slot)

    def recheck(self, slot: Slot) -> None:
        """After a lock-free release that saw nobody waiting: one may have queued since
        (another thread's call); hand it the slot."""
        if self.waiters and not slot.dead:
            slot.in_flight += 1
            self.hand_to_waiter(slot)

    def hand_to_waiter(self, slot: Slot) -> None:
        """Give one unit of `slot`'s capacity, already counted in `in_flight`, to a waiter."""
        with self.lock:
            while self.waiters:
                waiter = self.waiters.popleft()
                if waiter.done():
                    continue
                loop = waiter.get_loop()
                if loop is serving_loop():  # cached: Python 3.11 asks getpid() otherwise
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
            slots = self.slots
            if self.waiters:
                slot = None
            elif model_id:
                slot = self.pick_for(model_id)
            elif len(slots) == 1:  # `pick`, inline for the one replica: a call costs ~0.5%
                slot = slots[0]
                if slot.in_flight >= self.config.max_ongoing_requests:
                    slot = None
            else:
                slot = self.pick()
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
                if self.waiters:
                    self.release(slot)
                else:  # `release` with nobody waiting, inline
                    slot.in_flight -= 1
                    if self.waiters:
                        self.recheck(slot)

    # -- scaling and live updates -------------------------------------------------------

    def home_loop(self) -> asyncio.AbstractEventLoop | None:
        """The serving loop its health checks and autoscaler run on, once started."""
        if self.health is None or self.health[0].is_closed():
            return None
        return self.health[0]

    async def scale_to(self, count: int) -> None:
        """Start or drain replicas until `count` are in rotation; one change at a time."""
        self.target = count
        home = self.home_loop()
        if home is None:  # not started yet (an update from `run()`): build or drop now
            await asyncio.to_thread(self.resize_unstarted)
            return
        if home is not running_loop():
            await on_loop(home, self.scale_to(count))
            return
        assert self.scaling is not None
        async with self.scaling:
            missing = self.target - len(self.slots)  # the newest wish
            if missing > 0:
                await self.add_replicas(missing)
            elif missing < 0:
                self.drain(-missing)

    def resize_unstarted(self) -> None:
        self.start_replicas()
        extra = self.slots[self.target :]
        if extra:
            with self.lock:
                self.slots = self.slots[: self.target]
            for slot in extra:
                run_sync(slot.replica.stop(0))

    async def add_replicas(self, count: int) -> None:
        """Start `count` replicas (side by side where the backend can); each serves as soon
        as it is up. Raises the first constructor error, after the others are up."""
        generation = self.generation

        taken = {replica_index(slot) for slot in [*self.slots, *self.draining]}
        free = (n for n in itertools.count(1) if n not in taken)
        # The lowest free numbers: servers sharing replicas name the same ones.
        specs = [self.spec_for(next(free)) for _ in range(count)]

        async def one() -> None:
            replica = await asyncio.to_thread(self.backend.start_replica, specs.pop())
            await replica.start()
            if generation != self.generation or self.closed:
                await replica.stop(0)  # stopped meanwhile
            else:
                self.add_started(replica)

        self.starting_count += count
        outcomes: list[BaseException | None] = []
        try:
            if self.backend.starts_in_parallel:
                starts = (one() for _ in range(count))
                outcomes = await asyncio.gather(*starts, return_exceptions=True)
            else:
                for _ in range(count):
                    try:
                        await one()
                    except Exception as exc:
                        outcomes.append(exc)
        finally:
            self.starting_count -= count
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if errors:
            raise errors[0]

    def drain(self, count: int) -> None:
        """Take the `count` least busy replicas out of rotation; each stops once its calls
        are done (within `graceful_shutdown_timeout_s`)."""
        if self.shared:  # every server sharing the replicas drops the same ones
            victims = sorted(self.slots, key=lambda slot: -replica_index(slot))[:count]
        else:
            victims = sorted(self.slots, key=lambda slot: slot.in_flight)[:count]
        with self.lock:
            self.slots = [slot for slot in self.slots if slot not in victims]
        for slot in victims:
            slot.dead = True  # `release` hands it no more waiters
            self.draining.append(slot)
            task = asyncio.ensure_future(self.stop_drained(slot))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def stop_drained(self, slot: Slot) -> None:
        try:
            await slot.replica.stop(self.config.graceful_shutdown_timeout_s)
        finally:
            self.draining.remove(slot)

    async def update(self, config: DeploymentConfig) -> None:
        """Apply changed live options (`config.LIVE_OPTIONS`) without restarting a replica.
        A `reconfigure` that raises changes nothing and raises here."""
        old = self.config
        changed = [
            name for name in LIVE_OPTIONS if getattr(config, name) != getattr(old, name)
        ]
        logger.info("updating %r of %r in place: %s", self.name, self.app_name, ", ".join(changed))
        if config.user_config != old.user_config:
            await self.reconfigure(config.user_config)
        self.config = config
        scaling = config.autoscaling_config
        try:
            if scaling != old.autoscaling_config:
                self.start_autoscaler()
                if scaling is None:
                    await self.scale_to(config.initial_replicas)
                else:
                    within = max(scaling.min_replicas, min(scaling.max_replicas, self.target))
                    await self.scale_to(within)
            elif scaling is None and config.num_replicas != old.num_replicas:
                await self.scale_to(config.initial_replicas)
        except Exception:  # a new replica's constructor raised: keep what runs
            self.config = old
            self.target = len(self.slots)
            self.start_autoscaler()
            raise

    async def reconfigure(self, user_config: Any) -> None:
        """Call every replica's `reconfigure(user_config)`; if one raises, the replicas done
        so far get the old config back."""
        done: list[Slot] = []
        try:
            for slot in list(self.slots):
                await self.control(slot, "reconfigure", user_config)
                done.append(slot)
        except Exception:
            for slot in done:
                with contextlib.suppress(Exception):
                    await self.control(slot, "reconfigure", self.config.user_config)
            raise

    async def control(self, slot: Slot, method: str, *args: Any) -> Any:
        """Call a method of one replica directly, outside its `max_ongoing_requests`."""
        result: list[Any] = []

        async def send(message: Message) -> None:
            result.append(message.get("value"))

        call = Call(new_request_id(), "call", method, args)
        await slot.replica.handle(call, never, send)
        return result[0] if result else None

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
                replica = await asyncio.to_thread(self.backend.start_replica, self.new_spec())
                await replica.start()
            except Exception:
                delay = min(max(delay * 2, RESTART_BACKOFF_S[1]), RESTART_BACKOFF_S[-1])
                logger.exception("restarting a replica of %r failed; retrying in %.1fs",
                                 self.name, delay)  # fmt: skip
                continue
            if generation != self.generation:  # stopped meanwhile
                await replica.stop(0)
                break
            self.add_started(replica)
            break
        await stopping

    def add_started(self, replica: Replica) -> None:
        """Put a started replica in rotation and give it what waits."""
        slot = Slot(replica, started=True, born=asyncio.get_running_loop().time())
        self.add_slot(slot)
        while self.waiters and slot.in_flight < self.config.max_ongoing_requests:
            slot.in_flight += 1
            self.hand_to_waiter(slot)

    async def check_health(self) -> None:
        """Every `health_check_period_s`, replace replicas whose check fails or hangs.

        The checks run side by side and are not awaited past the timeout: a replica that
        does not answer (a stopped process, a blocked event loop) may never answer its
        cancel either. It is killed at once, which ends its check and its calls.
        """
        while True:
            await asyncio.sleep(self.config.health_check_period_s)
            timeout = self.config.health_check_timeout_s
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
                if self.autoscaler is not None and self.autoscaler.task is not None:
                    loop.call_soon_threadsafe(self.autoscaler.task.cancel)
        self.autoscaler = None
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

    async def retire(self) -> None:
        """Replaced by a new version (an update in place): handles look again, and once
        what it has queued and running is done, within `graceful_shutdown_timeout_s`,
        its replicas stop."""
        self.closed = True
        deadline = time.monotonic() + self.config.graceful_shutdown_timeout_s
        while self.waiters or any(slot.in_flight for slot in self.slots):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(RETIRE_POLL_S)
        await self.stop()

    async def close(self) -> None:
        """Stop for good: the deployment was deleted."""
        self.closed = True
        await self.stop()

    def status(self) -> dict[str, Any]:
        scaling = self.config.autoscaling_config
        return {
            "status": "DELETED" if self.closed else "HEALTHY" if self.slots else "STOPPED",
            "backend": self.backend.name,
            "num_replicas": self.config.num_replicas,
            "target_replicas": self.target,
            "running_replicas": len(self.slots),
            "starting_replicas": self.starting_count,
            "draining_replicas": len(self.draining),
            "autoscaling": None if scaling is None else {
                "config": scaling.to_dict(),
                "last_decision": self.autoscaler.decision if self.autoscaler else None,
            },
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
        }  # fmt: skip
