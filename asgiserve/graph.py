"""Deploying an `Application` graph: one scheduler per deployment, children first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from asgiserve.backends import Backend, ReplicaSpec, resolve_backend
from asgiserve.config import DeploymentConfig
from asgiserve.deployment import Application
from asgiserve.handle import DeploymentHandle
from asgiserve.scheduler import Scheduler
from asgiserve.shipping import fingerprint

logger = logging.getLogger("asgiserve")

ROLL_STEP = 5  # a rolling update starts 1/ROLL_STEP of a deployment's replicas at a time


def children(value: Any) -> list[Application]:
    """Applications bound among constructor arguments, inside lists, tuples and dicts too."""
    if isinstance(value, Application):
        return [value]
    if isinstance(value, (list, tuple)):
        return [app for item in value for app in children(item)]
    if isinstance(value, dict):
        return [app for item in value.values() for app in children(item)]
    return []


def replace_apps(value: Any, replace: Callable[[Application], Any]) -> Any:
    """`value` with each Application in it (inside lists, tuples, dicts) replaced."""
    if isinstance(value, Application):
        return replace(value)
    if isinstance(value, (list, tuple)):
        return type(value)(replace_apps(item, replace) for item in value)
    if isinstance(value, dict):
        return {key: replace_apps(item, replace) for key, item in value.items()}
    return value


def swap_handles(
    value: Any, names: dict[int, str], app_name: str, versions: dict[int, str]
) -> Any:
    return replace_apps(
        value,
        lambda app: DeploymentHandle(names[id(app)], app_name, version=versions[id(app)]),
    )


def with_options(root: Application, options: dict[str, dict[str, Any]]) -> Application:
    """A copy of the graph where the deployments named in `options` take those options
    (a config file's per-deployment overrides); the user's graph is left as it was."""
    copies: dict[int, Application] = {}
    unknown = set(options)

    def copy(app: Application) -> Application:
        if id(app) not in copies:
            deployment = app.deployment
            if deployment.name in options:
                unknown.discard(deployment.name)
                deployment = deployment.options(**options[deployment.name])
            args = replace_apps(app.args, copy)
            kwargs = replace_apps(app.kwargs, copy)
            copies[id(app)] = Application(deployment, args, kwargs)
        return copies[id(app)]

    copied = copy(root)
    if unknown:
        known = sorted({app.deployment.name for app in ordered(root)})
        raise ValueError(f"no deployment named {sorted(unknown)} in the application (has {known})")
    return copied


def ordered(root: Application) -> list[Application]:
    """Every Application in the graph once, dependencies before the ones that use them."""
    seen: dict[int, Application] = {}

    def visit(app: Application) -> None:
        if id(app) in seen:
            return
        for child in children((app.args, app.kwargs)):
            visit(child)
        seen[id(app)] = app

    visit(root)
    return list(seen.values())


def unique_names(apps: list[Application]) -> dict[int, str]:
    """Deployment names; two different bindings of one name get `_1`, `_2` suffixes."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for app in apps:
        name, n = app.deployment.name, 0
        while name in taken:
            n += 1
            name = f"{app.deployment.name}_{n}"
        taken.add(name)
        names[id(app)] = name
    return names


def ingress_name(root: Application) -> str:
    """The name `deploy_graph` gives the graph's ingress deployment."""
    apps = ordered(root)
    return unique_names(apps)[id(root)]


def deploy_graph(
    root: Application,
    app_name: str,
    backend: str | Backend,
    schedulers: dict[str, Scheduler],
    running: dict[str, Scheduler] | None = None,
) -> str:
    """Build every replica of the graph (blocking); returns the ingress deployment's name.

    Every scheduler goes into `schedulers` before any replica is built, so progress can be
    read from there meanwhile. `backend` is the choice for deployments that name none
    themselves. If a constructor raises, the replicas already built are stopped and the
    user's error propagates. With `running` (an update in place), a deployment whose code
    is unchanged keeps its scheduler, and its changed live options are applied last.
    """
    apps = ordered(root)
    names = unique_names(apps)
    versions: dict[int, str] = {}  # dependencies first, so a version covers its handles'
    fresh: list[Scheduler] = []
    kept: list[tuple[Scheduler, DeploymentConfig]] = []
    try:
        for app in apps:
            name = names[id(app)]
            config = app.deployment.config.with_options(name=name)
            chosen = resolve_backend(config.backend or backend)
            make = spec_maker(app, names, app_name, names[id(root)], versions)
            spec = make("")
            versions[id(app)] = chosen.version(spec)
            code = code_of(spec, chosen)
            old = (running or {}).get(name)
            if old is not None and not old.closed and old.code == code:
                schedulers[name] = old
                kept.append((old, config))
                continue
            scheduler = schedulers[name] = Scheduler(app_name, config, chosen, make)
            scheduler.code = code
            if old is not None:  # replica ids go on from the old version's
                scheduler.replica_counter = old.replica_counter
            fresh.append(scheduler)
        for scheduler in fresh:
            # A roll starts a fifth of the replicas at a time (at least one), as Ray
            # Serve's does: the old version serves meanwhile, on the same CPUs.
            at_once = None if running is None else max(1, scheduler.target // ROLL_STEP)
            scheduler.start_replicas(at_once)
        for scheduler, config in kept:
            if config != scheduler.config:
                apply_soon(scheduler.update(config))
    except BaseException:
        from asgiserve.loops import close_soon

        for scheduler in fresh:
            close_soon(scheduler.close())
        raise
    return names[id(root)]


def code_of(spec: ReplicaSpec, backend: Backend) -> tuple[Any, ...]:
    """What tells a change of code: the class or function object itself, the backend, and
    a fingerprint of the spec without its live options (constructor arguments, the other
    options, the source file of the module); None for arguments that cannot be pickled,
    which then count as changed."""
    try:
        print_ = fingerprint(spec)
    except Exception:
        print_ = None
    return (spec.target, backend.name, print_ or object())


def apply_soon(update: Coroutine[Any, Any, None]) -> None:
    """Apply a live update and raise its error, from synchronous code; from a thread that
    runs an event loop (which waiting would block), as a task there whose error is logged."""
    from asgiserve.loops import run_sync, running_loop

    loop = running_loop()
    if loop is None:
        run_sync(update)
        return
    task = loop.create_task(update)
    task.add_done_callback(log_failure)
    updates_in_flight.add(task)
    task.add_done_callback(updates_in_flight.discard)


updates_in_flight: set[asyncio.Task[None]] = set()


def log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a live update failed", exc_info=task.exception())


def spec_maker(
    app: Application, names: dict[int, str], app_name: str, ingress: str, versions: dict[int, str]
) -> Callable[[str], ReplicaSpec]:
    args = swap_handles(app.args, names, app_name, versions)
    kwargs = swap_handles(app.kwargs, names, app_name, versions)
    config = app.deployment.config.with_options(name=names[id(app)])

    def make(replica_id: str) -> ReplicaSpec:
        return ReplicaSpec(
            app_name=app_name,
            deployment_name=config.name,
            replica_id=replica_id,
            target=app.deployment.target,
            init_args=args,
            init_kwargs=kwargs,
            config=config,
            ingress=ingress,
        )

    return make
