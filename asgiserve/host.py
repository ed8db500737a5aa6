"""What `asgiserve run` serves in each server process.

`Host` wraps the router (or the user's own ASGI app) with a lifespan that deploys the
applications in the background, so the port and `/-/healthz` answer while models load;
prints each application's progress and then the URL; and on shutdown, once the server
has let in-flight requests finish, stops every replica (processes and actors included).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from asgiserve import config_file, logs, registry
from asgiserve.api import UNSET, delete, router, run, shutdown_async
from asgiserve.config import HTTPOptions
from asgiserve.deployment import Application, Deployment
from asgiserve.graph import with_options
from asgiserve.replica import Lifespan
from asgiserve.router import Router

T = TypeVar("T")
logger = logging.getLogger("asgiserve")

SPEC_ENV = "ASGISERVE_RUN_SPEC"  # how `--workers N` hands the command's settings to each worker
# A deployment that cannot start fails the command, as `serve run` does. uvicorn's and
# Hypercorn's supervisors stop on this code instead of restarting the worker forever.
DEPLOY_FAILED = 3


@dataclass
class RunSpec:
    """Everything `asgiserve run` was told; JSON, so worker processes get it too."""

    target: str
    server: str = "uvicorn"
    http: HTTPOptions = field(default_factory=HTTPOptions)
    backend: str | None = None
    name: str = "default"
    route_prefix: str | None = None
    workers: int = 1
    app_dir: str = "."

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        return cls(**{**data, "http": HTTPOptions(**data["http"])})


class TargetError(ValueError):
    """A TARGET or `import_path` that names nothing asgiserve can serve."""


class DeployFailed(Exception):
    """An application whose builder, constructor or startup raised; the user's error is
    its `__cause__`."""

    def __init__(self, name: str, what: str = "failed to deploy") -> None:
        super().__init__(f"application {name!r} {what}")
        self.name = name


def report_failure(exc: BaseException, label: str = "") -> None:
    """The user's traceback, framed with the application's name."""
    if isinstance(exc, DeployFailed) and exc.__cause__ is not None:
        say(f"{label}asgiserve: {exc}; stopping. Its error:", logging.ERROR, exc.__cause__)
        say(f"{label}asgiserve: {exc} (the error above)", logging.ERROR)
    else:
        say(f"{label}asgiserve: an application failed to deploy; stopping.", logging.ERROR, exc)


@dataclass
class Job:
    """One application to deploy once the server is up."""

    name: str
    deploy: Callable[[], object]


def import_object(path: str) -> Any:
    """The object `module:attribute` names; the current directory is importable, as for
    `uvicorn main:app` (and `--app-dir`, put first by `Host`)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise TargetError(f"{path!r} is not 'module:attribute' (as in 'main:app') or a config file")
    importable_from(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the user's module imports something missing: their traceback says what
        pythons = (sys.prefix, sys.base_prefix)
        looked = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(pythons)]
        raise TargetError(
            f"cannot import module {module_name!r} for {path!r}: {exc}. Looked in "
            f"{', '.join(looked) or 'no folder of yours'} (and Python's own); run from the "
            "directory the module is in, or name it with --app-dir DIR"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return found


def importable_from(folder: str) -> None:
    """Modules in `folder` import by name, here and in worker processes (which get this
    process's `sys.path`)."""
    path = os.path.abspath(folder)
    if path not in sys.path:
        sys.path.insert(0, path)


def as_application(found: Any) -> Application | None:
    if isinstance(found, Deployment):
        return found.bind_bare()
    return found if isinstance(found, Application) else None


def config_jobs(config: config_file.ConfigFile, target_router: Router) -> list[Job]:
    """Import and bind each application of a config file, with its overrides, now, so a
    wrong `import_path` or deployment name fails before the server starts."""
    jobs = []
    for index, entry in enumerate(config.schema.applications):

        def error(field: str, message: str, index: int = index) -> config_file.ConfigError:
            where = config.where(("applications", index, field))
            return config_file.ConfigError(f"{where}: {message}")

        try:
            found = import_object(entry.import_path)
        except TargetError as exc:
            raise error("import_path", str(exc)) from None
        application = as_application(found)
        if application is None and callable(found):  # a builder, as Serve's: args -> app
            try:
                built = found(entry.args)
            except Exception as exc:
                what = f"could not be built: its builder {entry.import_path} raised"
                raise DeployFailed(entry.name, what) from exc
            application = as_application(built)
            if application is None:
                raise error("import_path", "the builder function returned no bound application")
        elif application is None:
            raise error("import_path", f"that is {type(found).__name__}, not an application")
        elif entry.args:
            raise error("args", "args are for a builder function; this application is bound")
        overrides = {deployment.name: deployment.options() for deployment in entry.deployments}
        try:
            application = with_options(application, overrides)
        except (TypeError, ValueError) as exc:
            raise error("deployments", str(exc)) from None
        deploy = partial(
            run,
            application,
            name=entry.name,
            route_prefix=entry.route_prefix,
            router=target_router,
            backend=entry.backend,
        )
        jobs.append(Job(entry.name, deploy))
    return jobs


class Progress:
    """Prints `name: ready/wanted replicas ready` to stderr for each application whenever
    its count changes. A thread: a `module:app` target deploys while it is imported, before
    any event loop runs."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.shown: dict[str, str] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="asgiserve-progress", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def watch(self) -> None:
        while not self.stopped.wait(0.1):
            self.show()

    def show(self) -> None:
        lines = {app.name: app.progress() for app in registry.every_app()}
        for name, line in lines.items():
            if self.shown.get(name) != line:
                self.shown[name] = line
                say(self.label + line)

    def stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            if self.thread.is_alive():
                self.thread.join()
            self.show()


def say(line: str, level: int = logging.INFO, error: BaseException | None = None) -> None:
    """One of the command's lines: through asgiserve's logger, so it has a time, a level
    and `--log-format` (a traceback, `error`'s, is part of it); printed before that is set."""
    if not logger.handlers:
        print(line, file=sys.stderr, flush=True)
        if error is not None:
            traceback.print_exception(error, file=sys.stderr)
        return
    logger.log(level, line, exc_info=error)


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """`asyncio.to_thread`, but the thread does not hold up the process's exit: a SIGTERM
    while a constructor loads a model for minutes must not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            result = work()
        except BaseException as exc:  # noqa: B036 - handed to the awaiting task
            outcome = partial(future.set_exception, exc)
        else:
            outcome = partial(future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    threading.Thread(target=target, name="asgiserve-deploy", daemon=True).start()
    return await future


class Host:
    """The ASGI app `asgiserve run` serves: the target, and the lifespan described above."""

    def __init__(self, spec: RunSpec, label: str = "") -> None:
        self.spec = spec
        self.label = label
        self.progress = Progress(label)
        self.jobs: list[Job] = []
        self.app: ASGIApp = router
        # Before the target is imported: a `module:app` may deploy at import time.
        router.request_timeout_s = spec.http.request_timeout_s
        router.body_timeout_s = spec.http.body_timeout_s
        router.max_body_size = spec.http.max_body_size
        router.status_routes = spec.http.status_routes
        if spec.backend is not None:
            router.backend = spec.backend
        importable_from(spec.app_dir)
        self.progress.start()
        try:
            self.load(spec)
        except BaseException:
            self.progress.stop()
            raise
        logs.set_up_root(spec.http)

    def load(self, spec: RunSpec) -> None:
        if config_file.is_config_file(spec.target):
            self.jobs = config_jobs(config_file.load(spec.target), router)
            return
        found = import_object(spec.target)
        application = as_application(found)
        if application is not None:
            prefix = UNSET if spec.route_prefix is None else spec.route_prefix
            deploy = partial(run, application, name=spec.name, route_prefix=prefix)
            self.jobs = [Job(spec.name, deploy)]
        elif callable(found):
            if spec.route_prefix is not None:
                raise TargetError(
                    f"--route-prefix is for a bound application; {spec.target} is an ASGI app, "
                    "whose own asgiserve.run() calls choose their prefixes"
                )
            self.app = found
        else:
            raise TargetError(
                f"{spec.target} is {type(found).__name__}: give a bound application "
                "(Deployment.bind()), an ASGI app or a config file"
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        inner = Lifespan(self.app, scope)
        try:
            await inner.startup()
        except Exception as exc:
            self.progress.stop()
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        ready = asyncio.ensure_future(self.deploy_and_announce())
        self.reload_on_sighup()
        await send({"type": "lifespan.startup.complete"})
        try:
            await receive()  # lifespan.shutdown: the server no longer accepts, requests are done
        except asyncio.CancelledError:  # no shutdown comes (uvicorn's second Ctrl-C): the
            ready.cancel()  # loop is torn down, and the exit's own hook stops the replicas
            self.progress.stop()
            return
        ready.cancel()
        self.progress.stop()
        self.say_left_starting()
        await inner.shutdown()
        await shutdown_async()  # every replica, process and actor
        await send({"type": "lifespan.shutdown.complete"})

    def say_left_starting(self) -> None:
        """Name the replicas whose constructors still run in this process's threads, which
        cannot be interrupted: the process exits without waiting for them. (Worker processes
        still starting are killed by `shutdown_async`.)"""
        for app in registry.every_app():
            for name, (ready, wanted) in app.each_ready().items():
                scheduler = app.schedulers.get(name)
                left = wanted - ready
                if left > 0 and scheduler is not None and scheduler.backend.name == "inprocess":
                    replicas, verb = ("replica", "is") if left == 1 else ("replicas", "are")
                    say(
                        f"{self.label}asgiserve: stopping; {left} {replicas} of {name!r} "
                        f"(application {app.name!r}) {verb} still starting in this process "
                        f"and {verb} left to finish in a thread, which the exit does not wait for"
                    )

    def reload_on_sighup(self) -> None:
        """`kill -HUP` reloads a config file: each application is updated in place."""
        if not config_file.is_config_file(self.spec.target):
            return
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (a server run from a thread)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))

    async def reload(self) -> None:
        """Apply the config file again: applications added deploy, removed ones are
        deleted, changed ones update in place. A file that does not validate changes
        nothing; its errors are printed with file, field and line."""
        say(f"{self.label}asgiserve: SIGHUP: reloading {self.spec.target}")
        try:
            jobs = await in_daemon_thread(
                lambda: config_jobs(config_file.load(self.spec.target), router)
            )
        except (config_file.ConfigError, TargetError) as exc:
            say(f"{self.label}asgiserve: {exc}; nothing was changed", logging.ERROR)
            return
        except Exception as exc:
            what = "the config file could not be loaded; nothing was changed"
            say(f"{self.label}asgiserve: {what}", logging.ERROR, exc)
            return
        names = {job.name for job in jobs}
        for job in jobs:
            try:
                await in_daemon_thread(job.deploy)
            except Exception as exc:
                what = f"updating {job.name!r} failed; it runs as before"
                say(f"{self.label}asgiserve: {what}", logging.ERROR, exc)
        for name in sorted(set(registry.applications) - names):
            delete(name)
        say(f"{self.label}asgiserve: reloaded {self.spec.target}: {', '.join(sorted(names))}")

    async def deploy_and_announce(self) -> None:
        try:
            await self.deploy()
            for app in list(registry.applications.values()):
                for scheduler in app.schedulers.values():
                    try:
                        await scheduler.ensure_started()  # ingress startup, serving loop
                    except Exception as exc:
                        raise DeployFailed(app.name, "failed to start") from exc
        except Exception as exc:
            await self.fail(exc)
        self.progress.stop()
        self.announce()

    async def deploy(self) -> None:
        """Deploy the applications in turn, in a thread; until each starts, a placeholder
        keeps `/-/healthz` at 503 and shows it waiting."""
        waiting = [
            registry.RunningApp(job.name, None, router, "", deploying=True) for job in self.jobs
        ]
        registry.deploying.extend(waiting)

        def deploy_all() -> None:
            for job, placeholder in zip(self.jobs, waiting, strict=True):
                try:
                    job.deploy()
                except Exception as exc:
                    raise DeployFailed(job.name) from exc
                finally:
                    registry.deploying.remove(placeholder)

        try:
            await in_daemon_thread(deploy_all)
        finally:
            for placeholder in waiting:
                if placeholder in registry.deploying:
                    registry.deploying.remove(placeholder)

    async def fail(self, exc: Exception) -> None:
        self.progress.stop()
        report_failure(exc, self.label)
        await shutdown_async()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(DEPLOY_FAILED)

    def announce(self) -> None:
        host = self.spec.http.host
        host = f"[{host}]" if ":" in host else host
        scheme = "http" if self.spec.http.ssl_certfile is None else "https"
        url = f"{scheme}://{host}:{self.spec.http.port}"
        if self.spec.http.uds is not None:
            say(f"{self.label}Ready at unix:{self.spec.http.uds}")
            url = ""  # paths only: a client names the socket itself
        else:
            say(f"{self.label}Ready at {url}")
        if self.app is router:  # a user's app may mount it anywhere: it knows its URLs
            for route in reversed(router.routes):
                say(f"{self.label}  {route.app.name} at {url}{route.prefix}")


def worker_app() -> Host:
    """The app of each server process under `--workers N`: each imports the target and
    deploys its own replicas (an import string, as uvicorn's and Hypercorn's workers need)."""
    spec = RunSpec.from_json(os.environ[SPEC_ENV])
    logs.set_up_server(spec.http)
    try:
        return Host(spec, label=f"[worker {os.getpid()}] ")
    except (TargetError, config_file.ConfigError) as exc:
        say(f"asgiserve run: error: {exc}", logging.ERROR)
    except Exception as exc:
        report_failure(exc, f"[worker {os.getpid()}] ")
    sys.stderr.flush()
    os._exit(DEPLOY_FAILED)
