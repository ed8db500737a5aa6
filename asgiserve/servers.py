"""uvicorn and Hypercorn, run the way `asgiserve run` needs: keep-alive, graceful shutdown,
root path, TLS and proxy headers from `HTTPOptions`, and `--workers N` as N server
processes.

Each server handles SIGTERM and SIGINT itself: it stops accepting, lets in-flight requests
finish within `graceful_shutdown_timeout_s`, then runs the lifespan shutdown, where
`Host` stops the replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from typing import Any

from asgiserve import logs, metrics_page
from asgiserve.config import HTTPOptions
from asgiserve.extras import install_hint
from asgiserve.host import DEPLOY_FAILED, SPEC_ENV, Host, RunSpec, worker_app

SERVERS = ("uvicorn", "hypercorn")
# Each worker process builds its app from this import string and `SPEC_ENV`.
WORKER_APP = "asgiserve.host:worker_app"
HYPERCORN_WORKER_APP = "asgiserve.servers:hypercorn_worker_app"
# Hypercorn's own limit on the lifespan shutdown, beyond the replicas' drain.
LIFESPAN_SHUTDOWN_MARGIN_S = 60.0


class ServerMissing(RuntimeError):
    """The chosen server is not installed; the message names the extra that brings it."""


def serve(spec: RunSpec) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    logs.set_up_server(spec.http)
    if spec.workers > 1:
        os.environ[SPEC_ENV] = spec.to_json()  # spawned workers inherit the environment
        with tempfile.TemporaryDirectory(prefix="asgiserve-metrics-") as folder:
            os.environ.setdefault(metrics_page.DIR_ENV, folder)  # each writes its samples
            return serve_with(spec)
    return serve_with(spec)


def serve_with(spec: RunSpec) -> int:
    if spec.server == "uvicorn":
        return run_uvicorn(spec)
    if spec.server == "hypercorn":
        return run_hypercorn(spec)
    raise ValueError(f"unknown server {spec.server!r}; choose one of {SERVERS}")


def require(server: str) -> None:
    try:
        __import__(server)
    except ImportError:
        raise ServerMissing(
            f"{server} is not installed; {install_hint(server)}"
        ) from None


def bind_address(options: HTTPOptions) -> str:
    if options.uds is not None:
        return f"unix:{options.uds}"
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"{host}:{options.port}"


def uvicorn_config(app: Any, options: HTTPOptions, **extra: Any) -> Any:
    """A `uvicorn.Config` with the options; `extra` goes to it as it is."""
    require("uvicorn")
    import uvicorn

    # uvicorn declares whole seconds but waits with `loop.call_later`: fractions work.
    seconds: Any = {
        "timeout_keep_alive": options.keep_alive_timeout_s,
        "timeout_graceful_shutdown": options.graceful_shutdown_timeout_s,
    }
    return uvicorn.Config(
        app, host=options.host, port=options.port, uds=options.uds, root_path=options.root_path,
        log_level=options.log_level, access_log=options.access_log, log_config=None,
        ssl_keyfile=options.ssl_keyfile, ssl_certfile=options.ssl_certfile,
        proxy_headers=options.proxy_headers, forwarded_allow_ips=options.forwarded_allow_ips,
        **seconds, **extra,
    )  # fmt: skip


def hypercorn_config(options: HTTPOptions) -> Any:
    """A `hypercorn.config.Config` with the options."""
    require("hypercorn")
    from hypercorn.config import Config

    config = Config()
    config.bind = [bind_address(options)]
    config.keep_alive_timeout = options.keep_alive_timeout_s
    config.graceful_timeout = options.graceful_shutdown_timeout_s
    config.shutdown_timeout = options.graceful_shutdown_timeout_s + LIFESPAN_SHUTDOWN_MARGIN_S
    config.root_path = options.root_path
    config.loglevel = options.log_level.upper()
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = logging.getLogger("hypercorn.access") if options.access_log else None
    config.access_log_format = '%(h)s - "%(m)s %(Uq)s HTTP/%(H)s" %(s)s'  # uvicorn's line
    config.keyfile = options.ssl_keyfile
    config.certfile = options.ssl_certfile
    return config


def proxy_headers_middleware() -> Any:
    """uvicorn's middleware for `X-Forwarded-*`: a plain ASGI one, so under Hypercorn (which
    has no such setting) the same clients are trusted the same way as under uvicorn."""
    try:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
    except ImportError:
        raise ServerMissing(
            "proxy headers under Hypercorn use uvicorn's middleware, and uvicorn is not "
            f"installed; {install_hint('hypercorn')}, or give --no-proxy-headers"
        ) from None
    return ProxyHeadersMiddleware


def behind_proxy(app: Any, options: HTTPOptions) -> Any:
    """`app`, taking the client and scheme from trusted proxies' headers if so set."""
    if not options.proxy_headers:
        return app
    return proxy_headers_middleware()(app, trusted_hosts=options.forwarded_allow_ips)


def hypercorn_worker_app() -> Any:
    """The app of each Hypercorn worker under `--workers N`."""
    host = worker_app()
    return behind_proxy(host, host.spec.http)


def run_uvicorn(spec: RunSpec) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if spec.workers == 1:
        config = uvicorn_config(Host(spec), spec.http, lifespan="on")
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else DEPLOY_FAILED
    config = uvicorn_config(
        WORKER_APP, spec.http, lifespan="on", factory=True, workers=spec.workers
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = any(process.exitcode == DEPLOY_FAILED for process in supervisor.processes)
    return DEPLOY_FAILED if failed else 0


def run_hypercorn(spec: RunSpec) -> int:
    config = hypercorn_config(spec.http)
    if spec.http.proxy_headers:
        proxy_headers_middleware()  # missing: say so now, not in each worker
    if spec.workers == 1:
        from hypercorn.asyncio import serve as hypercorn_serve

        asyncio.run(hypercorn_serve(behind_proxy(Host(spec), spec.http), config))
        return 0
    from hypercorn.run import run

    config.application_path = HYPERCORN_WORKER_APP + "()"  # Hypercorn evaluates the attribute
    config.workers = spec.workers
    return int(run(config))
