"""Updating a running application in place: `asgiserve.run()` again under its name.

The new graph is compared with the running one deployment by deployment (`graph.code_of`).
A deployment whose code is unchanged keeps its scheduler and replicas, which keep their
state; its changed live options (`config.LIVE_OPTIONS`: replica counts, autoscaling,
`user_config`, limits, health and shutdown settings) are applied to them. Any other change
builds the deployment anew beside the old one; once every new replica is up (and started
on the serving loop), the application points at the new schedulers, and each replaced
one drains: it serves what it has queued and in flight, within
`graceful_shutdown_timeout_s`, then stops. The route never goes away. A constructor or
`reconfigure` that raises leaves the old version serving and raises from `run()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from asgiserve import registry
from asgiserve.backends import Backend
from asgiserve.deployment import Application
from asgiserve.graph import deploy_graph
from asgiserve.loops import background_loop, close_soon, running_loop
from asgiserve.scheduler import Scheduler

logger = logging.getLogger("asgiserve")

START_TIMEOUT_S = 600.0  # an ingress app's startup on the serving loop, before the switch


def update_app(
    app: registry.RunningApp, target: Application, prefix: str | None, backend: str | Backend
) -> None:
    """Update `app` (running on its router) to `target`, as described above; blocking."""
    # Not in a placeholder among `registry.deploying`: the old version serves meanwhile,
    # so `/-/healthz` stays 200 and the progress lines show it.
    new: dict[str, Scheduler] = {}
    ingress = deploy_graph(target, app.name, backend, new, app.schedulers)
    fresh = [s for name, s in new.items() if app.schedulers.get(name) is not s]
    try:
        start_on_serving_loop(fresh, app)
    except BaseException:
        for scheduler in fresh:
            close_soon(scheduler.close())
        raise
    replaced = [s for name, s in app.schedulers.items() if new.get(name) is not s]
    # Both sets first, so a request reading `schedulers[ingress]` meanwhile finds one.
    app.schedulers = {**app.schedulers, **new}
    app.ingress = ingress
    app.schedulers = new
    if prefix != app.route_prefix:
        app.router.remove_routes(app.name)
        app.route_prefix = prefix
        if prefix is not None:
            app.router.add_route(prefix, app)
    for scheduler in replaced:
        logger.info("deployment %r of %r replaced; the old one drains", scheduler.name, app.name)
        asyncio.run_coroutine_threadsafe(scheduler.retire(), background_loop())


def start_on_serving_loop(schedulers: list[Scheduler], app: registry.RunningApp) -> None:
    """Run new replicas' startup (an ingress app's lifespan) on the loop the running ones
    serve on, before any request is sent to them; if that loop is this thread's own, they
    start on their first request instead."""
    homes = [scheduler.home_loop() for scheduler in app.schedulers.values()]
    home = next((loop for loop in homes if loop is not None), None)
    if home is None or home is running_loop():
        return
    for scheduler in schedulers:
        future = asyncio.run_coroutine_threadsafe(scheduler.ensure_started(), home)
        try:
            future.result(START_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"deployment {scheduler.name!r} did not start within {START_TIMEOUT_S:g}s"
            ) from None
