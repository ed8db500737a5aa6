"""The module-level API: `run`, `delete`, `shutdown`, `status` and the handle getters."""

from __future__ import annotations

import asyncio
import atexit
from typing import Any

from asgiserve import registry
from asgiserve.backends import Backend, close_backends
from asgiserve.config import backend_from_env
from asgiserve.deployment import Application, Deployment
from asgiserve.graph import deploy_graph, ingress_name
from asgiserve.handle import DeploymentHandle
from asgiserve.loops import close_soon, run_sync
from asgiserve.prefixes import normalise_prefix
from asgiserve.router import Router
from asgiserve.updates import update_app

router = Router()

DEFAULT = "default"


class Unset:
    """Marks `route_prefix` as not given, so a deployment's own `route_prefix` can apply."""


UNSET = Unset()


def run(
    target: Application | Deployment,
    *,
    name: str = DEFAULT,
    route_prefix: str | None | Unset = UNSET,
    router: Router | None = None,
    backend: str | Backend | None = None,
) -> DeploymentHandle:
    """Deploy an application and return a handle to its ingress deployment.

    Blocks until every replica is built; a constructor that raises fails here with the
    user's traceback. An application of the same name on the same router is updated in
    place (`asgiserve.updates`); on another router it is replaced, and stopped after.
    Inside a worker, which imports the user's module, it deploys nothing and returns a
    handle to the server's application of that name.
    """
    if isinstance(target, Deployment):
        target = target.bind_bare()  # `run(Model)` is `run(Model.bind())`
    if not isinstance(target, Application):
        raise TypeError(f"run() takes a bound application (Deployment.bind()), got {target!r}")
    if registry.in_worker():
        return DeploymentHandle(ingress_name(target), name)
    chosen_router = router if router is not None else globals()["router"]
    if isinstance(route_prefix, Unset):
        route_prefix = target.deployment.route_prefix or "/"
    prefix = None if route_prefix is None else normalise_prefix(route_prefix)
    if prefix is not None:
        chosen_router.check_prefix(prefix, name)  # before building any replica
    chosen_backend = backend or chosen_router.backend or backend_from_env() or "inprocess"
    running = registry.applications.get(name)
    if running is not None and running.router is chosen_router:
        update_app(running, target, prefix, chosen_backend)
        register_exit_hook()
        return DeploymentHandle(running.ingress, name)
    app = registry.RunningApp(name, prefix, chosen_router, ingress="", deploying=True)
    registry.deploying.append(app)
    try:
        app.ingress = deploy_graph(target, name, chosen_backend, app.schedulers)
    finally:
        registry.deploying.remove(app)
    app.deploying = False
    old = registry.applications.get(name)
    registry.applications[name] = app
    if old is not None:
        old.router.remove_routes(name)
        close_soon(close_app(old))
    if prefix is not None:
        chosen_router.add_route(prefix, app)
    register_exit_hook()
    return DeploymentHandle(app.ingress, name)


async def close_app(app: registry.RunningApp) -> None:
    for scheduler in app.schedulers.values():
        await scheduler.close()


def delete(name: str) -> None:
    """Remove an application: its routes go at once, its replicas stop."""
    app = registry.applications.pop(name, None)
    if app is None:
        return
    app.router.remove_routes(name)
    close_soon(close_app(app))


async def shutdown_async() -> None:
    """`shutdown()` for async code."""
    apps = list(registry.applications.values())
    registry.applications.clear()
    for app in apps:
        app.router.remove_routes(app.name)
        await close_app(app)
    await asyncio.to_thread(close_backends)


def shutdown() -> None:
    """Stop everything: every application, replica, worker process and actor."""
    close_soon(shutdown_async())


def status() -> dict[str, Any]:
    """A JSON-able report of applications, deployments and replica states."""
    return {
        "applications": {
            app.name: {
                "status": "DEPLOYING" if app.deploying else "RUNNING",
                "route_prefix": app.route_prefix,
                "ingress": app.ingress,
                "deployments": {
                    name: scheduler.status() for name, scheduler in app.schedulers.items()
                },
            }
            for app in registry.every_app()
        }
    }


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to the application's ingress deployment.

    Inside a worker the application runs in the server: the handle names its ingress as
    `""`, which the server resolves when it is called.
    """
    if registry.in_worker():
        return DeploymentHandle(registry.INGRESS, name)
    return DeploymentHandle(registry.get_app(name).ingress, name)


def get_deployment_handle(deployment_name: str, app_name: str = DEFAULT) -> DeploymentHandle:
    if not registry.in_worker():
        registry.get_scheduler(app_name, deployment_name)  # fail now if there is none
    return DeploymentHandle(deployment_name, app_name)


exit_hook_registered = False


def register_exit_hook() -> None:
    global exit_hook_registered
    if not exit_hook_registered:
        exit_hook_registered = True
        atexit.register(shutdown_at_exit)


def shutdown_at_exit() -> None:
    if registry.applications:
        try:
            run_sync(shutdown_async(), timeout_s=30)
        except Exception:  # the interpreter is exiting; nothing more to tell anyone
            pass
