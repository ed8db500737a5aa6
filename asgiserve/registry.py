"""The running applications of this process, by name, across every router."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asgiserve.exceptions import DeploymentUnavailableError

if TYPE_CHECKING:
    from asgiserve.router import Router
    from asgiserve.scheduler import Scheduler


@dataclass
class RunningApp:
    name: str
    route_prefix: str | None
    router: Router
    ingress: str
    schedulers: dict[str, Scheduler] = field(default_factory=dict)


applications: dict[str, RunningApp] = {}


def get_app(name: str) -> RunningApp:
    try:
        return applications[name]
    except KeyError:
        running = sorted(applications) or "none"
        raise DeploymentUnavailableError(
            f"no application named {name!r} is running (running: {running})"
        ) from None


def get_scheduler(app_name: str, deployment_name: str) -> Scheduler:
    app = get_app(app_name)
    try:
        return app.schedulers[deployment_name]
    except KeyError:
        raise DeploymentUnavailableError(
            f"application {app_name!r} has no deployment {deployment_name!r} "
            f"(it has: {sorted(app.schedulers)})"
        ) from None
