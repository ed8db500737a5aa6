"""The running applications of this process, by name, across every router."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from starlette.types import Receive, Send

from asgiserve.exceptions import DeploymentUnavailableError

if TYPE_CHECKING:
    from asgiserve.backends.base import Call
    from asgiserve.router import Router
    from asgiserve.scheduler import Scheduler


class Dispatcher(Protocol):
    """Where a handle sends its calls: a `Scheduler`, or inside a worker the way back out."""

    closed: bool

    async def handle(self, call: Call, receive: Receive, send: Send) -> None: ...


@dataclass(eq=False)
class RunningApp:
    name: str
    route_prefix: str | None
    router: Router
    ingress: str
    schedulers: dict[str, Scheduler] = field(default_factory=dict)
    deploying: bool = False  # `run()` is still building its replicas
    http_ongoing: int = 0  # HTTP requests the router is answering for it now (`/-/metrics`)

    def each_ready(self) -> dict[str, tuple[int, int]]:
        """Replicas built and alive, and replicas wanted, by deployment."""
        return {
            name: (min(len(scheduler.slots), scheduler.target), scheduler.target)
            for name, scheduler in list(self.schedulers.items())
        }

    def replicas_ready(self) -> tuple[int, int]:
        """Replicas built and alive, and replicas wanted, over every deployment."""
        counts = self.each_ready().values()
        return sum(ready for ready, _ in counts), sum(wanted for _, wanted in counts)

    @property
    def ready(self) -> bool:
        ready, wanted = self.replicas_ready()
        return not self.deploying and ready == wanted

    def progress(self) -> str:
        """`name: 3/4 replicas ready`, and each deployment's count when there are several."""
        ready, wanted = self.replicas_ready()
        if self.deploying and not wanted:
            return f"{self.name}: waiting to deploy"
        line = f"{self.name}: {ready}/{wanted} replicas ready"
        each = self.each_ready()
        if len(each) > 1:
            line += " (" + ", ".join(f"{name} {r}/{w}" for name, (r, w) in each.items()) + ")"
        return line


applications: dict[str, RunningApp] = {}
# Applications whose replicas `run()` is building (maybe in another thread), so that
# `status()`, `/-/healthz` and the command's progress lines can see them.
deploying: list[RunningApp] = []


def every_app() -> list[RunningApp]:
    """Running and deploying applications, one per name (the newest); safe from any thread."""
    newest = {app.name: app for app in [*list(applications.values()), *list(deploying)]}
    return list(newest.values())

# Inside a worker process no application runs; handles reach theirs through the server.
upstream: Callable[[str, str, str], Dispatcher] | None = None
INGRESS = ""  # a handle's deployment name meaning "the application's ingress, wherever it is"


def in_worker() -> bool:
    """In a worker process or Ray actor, where the user's module is imported but the
    server, not this process, runs the applications."""
    return upstream is not None


def get_app(name: str) -> RunningApp:
    try:
        return applications[name]
    except KeyError:
        running = sorted(applications) or "none"
        raise DeploymentUnavailableError(
            f"no application named {name!r} is running (running: {running})"
        ) from None


def get_dispatcher(app_name: str, deployment_name: str, version: str = "") -> Dispatcher:
    """What a handle calls: the deployment's scheduler here, or the server seen from a worker
    (where `version`, the handle's, picks the replicas of the code it was made for)."""
    if upstream is not None and app_name not in applications:
        return upstream(app_name, deployment_name, version)
    return get_scheduler(app_name, deployment_name)


def get_scheduler(app_name: str, deployment_name: str) -> Scheduler:
    app = get_app(app_name)
    if deployment_name == INGRESS:
        deployment_name = app.ingress
    try:
        return app.schedulers[deployment_name]
    except KeyError:
        raise DeploymentUnavailableError(
            f"application {app_name!r} has no deployment {deployment_name!r} "
            f"(it has: {sorted(app.schedulers)})"
        ) from None
