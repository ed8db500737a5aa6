"""Replicas as Ray actors, placed by Ray anywhere in a cluster.

Each replica is one actor wrapping the same `ReplicaRuntime`. The server calls its actors
directly (no proxy actor in between), with the ASGI exchange stretched over actor calls:

    begin(calls)       the calls this server had ready for the actor in one turn of its
                       loop, each with its first `receive()` message; returns as soon as
                       one has news, with the news of all: small responses whole
    more(keys)         a streaming generator: the rest of the calls `begin` left running
                       (streams, WebSockets, slower handlers), news as it comes
                       (`ray_link` sends both and hands the news out)
    deliver(key, msg)  the answer to a replica's second `receive()` (a streamed body, a
                       WebSocket): the replica sends a PULL marker, the server answers
    cancel(key)        cancel one call, returning once the user's code has stopped

`key` is a secret the server makes per call, so no client can reach another's messages.
Cancelling the caller's task cancels its call alone, raising `CancelledError` in the
user's handler, whatever other calls travel in the same actor call.

Actors are named by replica id and a fingerprint of the code and options they run, in the
`asgiserve` namespace, so servers that deploy the same application on one cluster share
its replicas instead of starting their own, and a server deploying other code under the
same application name gets actors of its own.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from typing import Any

from starlette.types import Message, Receive, Send

from asgiserve import registry
from asgiserve.backends.base import STOP_GRACE_S, Backend, Call, Replica, ReplicaSpec
from asgiserve.backends.wire import wire_scope
from asgiserve.context import numbered_ids
from asgiserve.exceptions import DeploymentUnavailableError, ReplicaDiedError
from asgiserve.extras import install_hint
from asgiserve.shipping import fingerprint, module_to_copy, pickle_spec, worker_path

try:
    import ray
    from ray.exceptions import RayActorError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the ray backend needs Ray, which is not installed: {install_hint('ray')}"
    ) from exc

from asgiserve.backends.ray_actor import PULL, ReplicaActor, register_serializers
from asgiserve.backends.ray_board import RayDecider
from asgiserve.backends.ray_link import Link

logger = logging.getLogger("asgiserve")

NAMESPACE = "asgiserve"
RELEASE_WAIT_S = 10.0  # how long a stopped actor's name may take to become free again
# The key of each call (`handle`): ids of their own, never the request ids clients see.
call_keys = numbered_ids()


def new_call_keys() -> None:
    """A forked server talks to the same actors: its keys must differ from its parent's."""
    global call_keys
    call_keys = numbered_ids()


os.register_at_fork(after_in_child=new_call_keys)


class RayUpstream:
    """A handle's calls from inside an actor, sent straight to its deployment's actors:
    those of the handle's `version` (a fingerprint) where it has one, as a handle given
    in `bind()` does, so a shared replica never calls another server's code."""

    closed = False

    def __init__(self, app_name: str, deployment_name: str, version: str = "") -> None:
        self.app_name = app_name
        self.deployment_name = deployment_name
        self.version = version
        self.target = f"{app_name}/{deployment_name or '(ingress)'}"
        self.replicas: list[RayReplica] = []
        self.in_flight: collections.Counter[str] = collections.Counter()  # by replica id

    def actors(self, prefix: str) -> list[RayReplica]:
        return [RayReplica(ray.get_actor(name, NAMESPACE), name) for name in named_actors(prefix)]

    def find(self) -> list[RayReplica]:
        if self.deployment_name == registry.INGRESS:  # `get_app_handle`: ask the app's replicas
            for replica in self.actors(f"{self.app_name}#"):
                with contextlib.suppress(RayActorError):
                    self.deployment_name = ray.get(replica.actor.ingress.remote())
                    break
        found = self.actors(f"{self.app_name}#{self.deployment_name}#")
        if self.version:
            found = [replica for replica in found if version_of(replica.name) == self.version]
        elif len(versions := {version_of(replica.name) for replica in found}) > 1:
            raise DeploymentUnavailableError(
                f"{self.target} runs as {len(versions)} different versions on this Ray "
                "cluster (servers that deploy other code under one name); pass the handle "
                "to this deployment in .bind() arguments, so it knows which one to call"
            )
        if not found:
            raise DeploymentUnavailableError(
                f"no Ray replica of {self.target} is running; from a Ray replica, handles "
                "reach deployments on the ray backend only"
            )
        return found

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        while True:
            if not self.replicas:
                self.replicas = await asyncio.to_thread(self.find)
            replica = min(self.replicas, key=lambda replica: self.in_flight[replica.replica_id])
            self.in_flight[replica.replica_id] += 1
            try:
                await replica.handle(call, receive, send)
                return
            except ReplicaDiedError as exc:
                self.replicas = [other for other in self.replicas if other is not replica]
                if exc.sent:
                    raise
            finally:
                self.in_flight[replica.replica_id] -= 1


class Pulls:
    """The server's answers to a replica's `receive()` calls; a failing one ends the call."""

    def __init__(self, actor: Any, key: str, receive: Receive) -> None:
        self.actor = actor
        self.key = key
        self.receive = receive
        self.tasks: list[asyncio.Task[None]] = []
        self.error: Exception | None = None
        caller = asyncio.current_task()
        assert caller is not None
        self.caller = caller

    def start(self) -> None:
        self.tasks.append(asyncio.ensure_future(self.pull()))

    async def pull(self) -> None:
        try:
            message = await self.receive()
        except Exception as exc:
            self.error = exc
            self.caller.cancel()
            return
        with contextlib.suppress(RayActorError):
            await self.actor.deliver.remote(self.key, message)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


async def forward(messages: list[Message], send: Send, pulls: Pulls) -> None:
    for message in messages:
        if message["type"] == PULL:
            pulls.start()
        else:
            await send(message)


class RayReplica(Replica):
    """An actor as the scheduler sees it; `maker` is our backend if this process made it."""

    def __init__(self, actor: Any, name: str, maker: RayBackend | None = None) -> None:
        self.actor = actor
        self.name = name  # the actor's: the replica id, then a fingerprint of its code
        self.replica_id = name.partition("@")[0]
        self.maker = maker
        self.dead = False
        self.links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Link] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def shared(self) -> bool:  # type: ignore[override] # made by another server: theirs
        return self.maker is None

    def died(self, exc: BaseException) -> ReplicaDiedError:
        self.dead = True
        return ReplicaDiedError(f"replica {self.replica_id} (a Ray actor) died: {exc}", sent=True)

    def was_dead(self) -> ReplicaDiedError:
        """For a call that never reached the actor: safe to try on another replica."""
        return ReplicaDiedError(f"replica {self.replica_id} (a Ray actor) died", sent=False)

    def link(self) -> Link:
        """This loop's link to the actor (a handle's synchronous callers use another loop)."""
        loop = asyncio.get_running_loop()
        link = self.links.get(loop)
        if link is None:
            link = self.links[loop] = Link(self.actor, self.died)
        return link

    async def handle(self, call: Call, receive: Receive, send: Send) -> None:
        if self.dead:
            raise self.was_dead()
        first = None
        if call.kind == "asgi":
            assert call.scope is not None
            call.scope = wire_scope(call.scope)  # the router made this call for us alone
            first = await receive()
        # The actor knows the call by a key of ours, never by the client's x-request-id
        # or anything a client could guess from the ids it is shown: a random prefix of
        # these keys' own and a count (a fresh secret per call cost a system call each).
        key = next(call_keys)
        pulls = Pulls(self.actor, key, receive)
        try:
            await self.exchange(key, call, first, send, pulls)
        except asyncio.CancelledError:
            if pulls.error is None:
                raise
            pulls.caller.uncancel()  # our own receive failed (a body over the limit)
            raise pulls.error from None
        finally:
            pulls.close()

    async def exchange(
        self, key: str, call: Call, first: Message | None, send: Send, pulls: Pulls
    ) -> None:
        link = self.link()
        inbox = link.send(key, call, first)
        try:
            while True:
                messages, done, error = await inbox.get()
                await forward(messages, send, pulls)
                if done:
                    break
        except asyncio.CancelledError:
            if not link.unsent(key):
                await self.cancel(key)
            raise
        finally:
            link.forget(key)
        if error is not None:
            raise error

    async def cancel(self, key: str) -> None:
        """Cancel the call, and hold our slot until the user's code has stopped.

        Not recursive: the handler's own calls are cancelled by asyncio, as on every
        backend, so that what it shields from the cancel (asyncio.shield) goes on.
        """
        with contextlib.suppress(Exception):
            await self.actor.cancel.remote(key)

    async def start(self) -> None:
        try:
            await self.actor.start.remote()
        except RayActorError as exc:
            raise self.died(exc) from None

    async def check_health(self) -> Any:
        if self.dead:
            raise self.was_dead()
        try:
            return await self.actor.check_health.remote()
        except RayActorError as exc:
            raise self.died(exc) from None

    async def metric_samples(self) -> Any:
        if self.dead:
            raise self.was_dead()
        return await self.actor.metric_samples.remote()

    async def stop(self, timeout_s: float) -> None:
        """Drain and kill the actor if this process made it; others' actors are theirs."""
        if self.maker is None:
            return
        if not self.dead:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(self.actor.stop.remote(timeout_s), timeout_s + STOP_GRACE_S)
        await asyncio.to_thread(kill, self.actor, self.name)
        self.maker.live.discard(self.name)


watcher: subprocess.Popen[bytes] | None = None


def init_in_lasting_thread(options: dict[str, Any]) -> None:
    """`ray.init` from a thread that lives as long as the process.

    A local Ray's daemons get a parent-death signal (PR_SET_PDEATHSIG), which Linux sends
    when the *thread* that started them ends: started from a deploy thread (`asgiserve run`
    deploys in one), the local Ray died once the deploy was done, its log forwarding with it.
    """
    started: concurrent.futures.Future[None] = concurrent.futures.Future()

    def keep() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        while ray.is_initialized():  # until `asgiserve.shutdown()` or the process's end
            time.sleep(1)

    threading.Thread(target=keep, name="asgiserve-ray", daemon=True).start()
    started.result()


def watch_local_ray() -> None:
    """A Ray this process started stops with it, even when it is killed (`ray_watch`)."""
    global watcher
    if watcher is None or watcher.poll() is not None:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "asgiserve.backends.ray_watch", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def version_of(name: str) -> str:
    """The fingerprint in an actor's name: `app#Deployment#1@3fa2...`, maybe `.2` after."""
    return name.partition("@")[2].partition(".")[0]


def named_actors(prefix: str) -> list[str]:
    """Names of asgiserve's actors on the cluster that start with `prefix`."""
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix)
    ]


def can_send_by_value(error: BaseException | None, spec: ReplicaSpec) -> bool:
    """The node failed to import the deployment's own module, which could travel instead."""
    module = getattr(spec.target, "__module__", "")
    return (
        isinstance(error, ImportError)
        and (error.name or "").partition(".")[0] == module.partition(".")[0]
        and module_to_copy(spec.target, by_value=True) is not None
    )


@functools.cache
def actor_class() -> Any:
    return ray.remote(ReplicaActor)  # once: Ray ships the class to the cluster with it


def kill(actor: Any, name: str) -> None:
    """Kill an actor and wait until its name is free for the next deployment to use."""
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, NAMESPACE)
        except ValueError:
            return
        time.sleep(0.02)


class RayBackend(Backend):
    """Each replica a Ray actor; Ray places it by its `ray_actor_options`.

    `address` (or `RAY_ADDRESS`) names a running cluster, `"auto"` the one on this machine;
    with neither, Ray is started here on first use and stopped by `asgiserve.shutdown()`.
    Other `ray.init` options (`num_cpus`, `runtime_env`, ...) go in `init_options`.
    """

    name = "ray"
    starts_in_parallel = True

    def __init__(self, address: str | None = None, **init_options: Any) -> None:
        self.address = address
        self.init_options = init_options
        self.owner = uuid.uuid4().hex  # marks the actors this process makes
        self.lock = threading.Lock()
        self.started_ray = False
        self.live: set[str] = set()  # names of actors this process made and still uses

    def connect(self) -> None:
        with self.lock:
            if ray.is_initialized():
                register_serializers()
                return
            main = threading.current_thread() is threading.main_thread()
            handler = signal.getsignal(signal.SIGTERM) if main else None
            options = {"address": self.address, "log_to_driver": True, **self.init_options}
            if main:
                ray.init(**options)
                signal.signal(signal.SIGTERM, handler)  # ray.init replaces it; ours must stay
            else:
                init_in_lasting_thread(options)
            self.started_ray = True
            watch_local_ray()  # ends only what this process started: its descendants
            register_serializers()

    def version(self, spec: ReplicaSpec) -> str:
        return fingerprint(spec)

    def shared_decider(self, spec: ReplicaSpec) -> RayDecider | None:
        """Servers sharing these actors agree on their number through one board."""
        scaling = spec.config.autoscaling_config
        if scaling is None:
            return None
        self.connect()
        name = f"board:{spec.app_name}#{spec.deployment_name}@{fingerprint(spec)}"
        return RayDecider(name, NAMESPACE, scaling)

    def start_replica(self, spec: ReplicaSpec) -> Replica:
        self.connect()
        # Servers share an actor only when they would run the same code and options.
        base = name = f"{spec.replica_id}@{fingerprint(spec)}"
        with self.lock:
            n = 1
            while name in self.live:  # this process redeployed the application under it
                n += 1
                name = f"{base}.{n}"
            self.live.add(name)
        others = [other for other in named_actors(f"{spec.replica_id}@") if other != name]
        if others and not any(other.startswith(base) for other in others):
            logger.info(
                "replica %s: the Ray actors under this name (%s) run other code or options "
                "(another server's deployment); this server starts its own",
                spec.replica_id, ", ".join(others),
            )  # fmt: skip
        try:
            return self.create(spec, name)
        except BaseException:
            self.live.discard(name)
            raise

    def create(self, spec: ReplicaSpec, name: str) -> RayReplica:
        """The actor, its code imported by name where the node can import it, else sent
        by value (a node without the project's files: see `runtime_env` in the docs)."""
        actor, owner, error = self.start_actor(spec, name, pickle_spec(spec))
        if can_send_by_value(error, spec):
            logger.warning(
                "replica %s: the Ray node cannot import %s (%s); sending the deployment's "
                "module by value. Ship your project with ray_actor_options={'runtime_env': "
                "{'working_dir': ...}} (or 'py_modules') so nodes import it",
                name, spec.target.__module__, error,
            )  # fmt: skip
            if owner == self.owner:
                kill(actor, name)
            actor, owner, error = self.start_actor(spec, name, pickle_spec(spec, by_value=True))
        if error is not None:
            if owner == self.owner:
                kill(actor, name)
            if isinstance(error, ImportError):
                error.add_note(
                    "The Ray node could not import the deployment's code: install it there, "
                    "or ship it with ray_actor_options={'runtime_env': {'working_dir': ...}} "
                    "or {'py_modules': [...]}"
                )
            raise error
        if owner != self.owner:  # another server made it: shared, and stopped by them
            self.live.discard(name)
            return RayReplica(actor, name)
        return RayReplica(actor, name, self)

    def start_actor(
        self, spec: ReplicaSpec, name: str, spec_data: bytes
    ) -> tuple[Any, str, BaseException | None]:
        options = dict(spec.config.ray_actor_options or {})
        actor = (
            actor_class()
            .options(name=name, namespace=NAMESPACE, get_if_exists=True, **options)
            .remote(self.owner, RayUpstream, worker_path(), spec_data)
        )
        try:
            owner, error = ray.get(actor.ready.remote())
        except RayActorError as exc:
            raise ReplicaDiedError(
                f"replica {name} (a Ray actor) died while starting: {exc}"
            ) from None
        return actor, owner, error

    def close(self) -> None:
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
