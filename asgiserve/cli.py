"""The `asgiserve` command (also `python -m asgiserve`).

`asgiserve run TARGET` serves a bound application, an ASGI app or a config file with
uvicorn or Hypercorn, as `serve run` does for Ray Serve. Settings come, weakest first,
from the defaults, the config file's `http_options`, the flags, and for the keep-alive
timeout the `ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S` environment variable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from asgiserve import __version__, config_file, preflight, reload
from asgiserve.backends import stop_starting
from asgiserve.config import (
    BACKEND_ENV,
    DEFAULT_BODY_TIMEOUT_S,
    KEEP_ALIVE_ENV,
    LOG_FORMATS,
    LOG_LEVELS,
    HTTPOptions,
)
from asgiserve.host import (
    DEPLOY_FAILED,
    DeployFailed,
    RunSpec,
    TargetError,
    importable_from,
    report_failure,
)
from asgiserve.servers import SERVERS, ServerMissing, serve

USAGE_ERROR = 2  # as argparse exits on a bad flag
DEFAULTS = {field.name: field.default for field in dataclasses.fields(HTTPOptions)}
# Flags that set an `HTTPOptions` field of the same name; unset ones leave the file's value.
HTTP_FLAGS = ("host", "port", "keep_alive_timeout_s", "request_timeout_s", "body_timeout_s",
              "root_path", "graceful_shutdown_timeout_s", "max_body_size", "uds",
              "log_level", "access_log", "log_format", "ssl_keyfile", "ssl_certfile",
              "proxy_headers", "forwarded_allow_ips", "reload", "reload_dirs")  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asgiserve", description="Serve asgiserve applications over HTTP."
    )
    parser.add_argument("--version", action="version", version=f"asgiserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="serve a bound application, an ASGI app or a config file",
        description=(
            "Serve TARGET with uvicorn or Hypercorn until SIGTERM or SIGINT, which let "
            "in-flight requests finish and stop every replica. TARGET is module:application "
            "(a bound application, deployed on the default router), module:app (your ASGI "
            "app, which mounts the router) or a config file (.yaml, .yml, .json). Flags win "
            "over the config file's http_options."
        ),
    )
    run.add_argument("target", metavar="TARGET", help="module:application, module:app or a file")
    run.add_argument(
        "--server", choices=SERVERS, default="uvicorn", help="the HTTP server (default: uvicorn)"
    )
    run.add_argument("--host", help=f"address to listen on (default: {DEFAULTS['host']})")
    run.add_argument("--port", type=int, help=f"port to listen on (default: {DEFAULTS['port']})")
    run.add_argument(
        "--uds", metavar="PATH", help="listen on this Unix domain socket instead (default: none)"
    )
    run.add_argument(
        "--backend",
        choices=preflight.BACKENDS,
        help=(
            "where replicas run, for deployments that choose none "
            f"(default: ${BACKEND_ENV}, else inprocess)"
        ),
    )
    run.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="import TARGET's module (or a config file's) from DIR (default: the current one)",
    )
    run.add_argument(
        "--name",
        default="default",
        help="the application's name, for a module:application TARGET (default: default)",
    )
    run.add_argument(
        "--route-prefix",
        help=(
            "where a module:application TARGET is served (default: the deployment's "
            "route_prefix, else /)"
        ),
    )
    run.add_argument(
        "--keep-alive-timeout-s",
        type=float,
        metavar="SECONDS",
        help=(
            "close idle keep-alive connections after this long "
            f"(default: {DEFAULTS['keep_alive_timeout_s']:g}; ${KEEP_ALIVE_ENV} wins over it)"
        ),
    )
    run.add_argument(
        "--request-timeout-s",
        type=float,
        metavar="SECONDS",
        help="answer 504 to a request not answered within this long (default: no limit)",
    )
    run.add_argument(
        "--body-timeout-s",
        type=float,
        metavar="SECONDS",
        help=(
            "answer 408 to a request whose body stops arriving for this long "
            f"(default: {DEFAULT_BODY_TIMEOUT_S:g})"
        ),
    )
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help=f"the HTTP server's log level (default: {DEFAULTS['log_level']})",
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=(
            "text lines (time, level, logger, the request's application, deployment, replica "
            "and id, message) or one JSON object per line "
            f"(default: {DEFAULTS['log_format']})"
        ),
    )
    run.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the HTTP server's line per request, on stdout (default: on)",
    )
    run.add_argument(
        "--max-body-size",
        type=int,
        metavar="BYTES",
        help=(
            "answer 413 to a request body larger than this "
            f"(default: {DEFAULTS['max_body_size']}, 100 MiB)"
        ),
    )
    run.add_argument(
        "--graceful-shutdown-timeout-s",
        type=float,
        metavar="SECONDS",
        help=(
            "on SIGTERM or SIGINT, let in-flight requests finish within this long "
            f"(default: {DEFAULTS['graceful_shutdown_timeout_s']:g})"
        ),
    )
    run.add_argument(
        "--root-path",
        metavar="PATH",
        help="the path a reverse proxy serves the app under, such as /api (default: none)",
    )
    run.add_argument(
        "--ssl-keyfile",
        metavar="PATH",
        help="the PEM private key to serve HTTPS with (default: none)",
    )
    run.add_argument(
        "--ssl-certfile",
        metavar="PATH",
        help="its PEM certificate chain (default: none): give both, or neither",
    )
    run.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "take the client's address and scheme from X-Forwarded-For and X-Forwarded-Proto, "
            "sent by a trusted proxy (default: on)"
        ),
    )
    run.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help=(
            "comma-separated addresses (or *) of the proxies whose headers are trusted "
            f"(default: {DEFAULTS['forwarded_allow_ips']})"
        ),
    )
    run.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "restart the server when a .py file (or the config file) changes, for development "
            "(default: off); watches --app-dir and a config file's modules' directories"
        ),
    )
    run.add_argument(
        "--reload-dir",
        dest="reload_dirs",
        action="append",
        metavar="DIR",
        help="watch DIR instead, repeatable (default: as --reload says)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help=(
            "server processes; each deploys its own replicas on the inprocess and "
            "subprocess backends, and they share one set on the ray backend (default: 1)"
        ),
    )
    run.add_argument(
        "--no-status-routes",
        dest="status_routes",
        action="store_false",
        default=None,
        help=(
            "do not answer GET /-/healthz, /-/routes, /-/status and /-/metrics "
            "(default: answer them)"
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    flags = {name: getattr(args, name) for name in HTTP_FLAGS if getattr(args, name) is not None}
    if args.status_routes is not None:
        flags["status_routes"] = args.status_routes
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.route_prefix is not None and not args.route_prefix.startswith("/"):
        parser.error(f"--route-prefix must start with '/', got {args.route_prefix!r}")
    try:
        preflight.check_backend(args.backend, "--backend")
        preflight.check_environment()
        if config_file.is_config_file(args.target):
            config = config_file.load(args.target)
            for entry in config.schema.applications:
                where = f"{args.target} (application {entry.name!r})"
                preflight.check_backend(entry.backend, where)
            http = config.http_options(**flags)
        else:
            preflight.check_target_form(args.target, args.app_dir)
            http = HTTPOptions(**flags)
            if args.workers > 1:  # each worker imports it; say now if none could
                check_importable(args.target, args.app_dir)
        preflight.check_port(http)
        preflight.check_tls(http)
        if http.reload and args.workers > 1:
            raise preflight.PreflightError(
                "--reload runs one server process: give --workers 1 (or no --workers)"
            )
    except (config_file.ConfigError, TargetError, preflight.PreflightError) as exc:
        return error(exc)
    except ValueError as exc:  # a flag HTTPOptions refuses, or the environment variable
        parser.error(str(exc))
    spec = RunSpec(
        target=args.target,
        server=args.server,
        http=http,
        backend=args.backend,
        name=args.name,
        route_prefix=args.route_prefix,
        workers=args.workers,
        app_dir=args.app_dir,
    )
    # uvicorn puts back the handler it found and raises the signal again once it has shut
    # down; ours exits quietly (and with 0) instead of dying of it. Before the server runs,
    # the same handler stops an import that deploys for too long.
    if http.reload:
        try:
            folders = reload.watched(spec)
        except preflight.PreflightError as exc:
            return error(exc)
        return reload.supervise(spec, [*(sys.argv[1:] if argv is None else argv)], folders)
    quit_on_signal(exit_quietly)
    try:
        return serve(spec)
    except (config_file.ConfigError, TargetError, ServerMissing) as exc:
        return error(exc)
    except DeployFailed as exc:  # a config file's builder raised while it was read
        report_failure(exc)
        return DEPLOY_FAILED
    finally:  # the server is done (Hypercorn's loop put Python's own handlers back)
        quit_on_signal(exit_now)


def exit_quietly(signum: int, frame: FrameType | None) -> None:
    """Exit with 0, as a server asked to stop does. Worker processes still building replicas
    are killed first, so the exit does not wait for their constructors; a second signal
    while the process exits ends it at once."""
    quit_on_signal(exit_now)
    stop_starting()
    raise SystemExit(0)


def exit_now(signum: int, frame: FrameType | None) -> None:
    """No traceback from wherever the exit had got to (a thread join, an atexit hook)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


def quit_on_signal(handler: Callable[[int, FrameType | None], None]) -> None:
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def error(exc: Exception) -> int:
    print(f"asgiserve run: error: {exc}", file=sys.stderr)
    return USAGE_ERROR


def check_importable(target: str, app_dir: str) -> None:
    module = target.partition(":")[0]
    importable_from(app_dir)
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None or ":" not in target:
        raise TargetError(f"cannot find module {module!r} for {target!r} (or it is no module:attr)")
