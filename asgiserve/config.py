"""Options and their defaults: one place to read what every limit is and how to change it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from asgiserve.autoscaling import AUTO, AutoscalingConfig
from asgiserve.logs import LoggingConfig

DEFAULT_MAX_ONGOING_REQUESTS = 5
# None: twice what the deployment's replicas serve at once, and at least 100. Finite, so
# memory stays bounded under any overload (a queued HTTP request holds its scope and about
# half a MB of body buffers at most), and relative, so a queued request waits about two
# handler durations rather than seconds: past it, 503 with Retry-After at once. -1 lifts
# the limit (a program fanning out more handle calls than that at once, trusted code only).
DEFAULT_MAX_QUEUED_REQUESTS: int | None = None
MIN_DEFAULT_QUEUE = 100
DEFAULT_HEALTH_CHECK_PERIOD_S = 10.0
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 30.0
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024  # bytes; larger request bodies get 413
DEFAULT_BODY_TIMEOUT_S = 30.0  # a body that stops arriving for this long gets 408
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"  # uvicorn's: a proxy on this machine

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
BACKEND_ENV = "ASGISERVE_BACKEND"
KEEP_ALIVE_ENV = "ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S"


@dataclass(frozen=True)
class DeploymentConfig:
    """The options of `@asgiserve.deployment`, kept separate from the user's class."""

    name: str
    num_replicas: int | str | None = None  # None: 1, or autoscaled if configured; "auto"
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    max_queued_requests: int | None = DEFAULT_MAX_QUEUED_REQUESTS
    backend: Any = None
    ray_actor_options: dict[str, Any] | None = None
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
    autoscaling_config: AutoscalingConfig | None = None
    user_config: Any = None
    logging_config: LoggingConfig | None = None  # a dict is read too

    def __post_init__(self) -> None:
        object.__setattr__(self, "logging_config", LoggingConfig.of(self.logging_config))
        raw: Any = self.autoscaling_config
        scaling = AutoscalingConfig.of(raw)
        replicas = self.num_replicas
        if replicas == "auto":  # Ray Serve's defaults, with what was given over them
            if isinstance(raw, AutoscalingConfig):
                default = AutoscalingConfig().to_dict()
                raw = {k: v for k, v in raw.to_dict().items() if v != default[k]}
            scaling = AutoscalingConfig(**{**AUTO.to_dict(), **(raw or {})})
        elif replicas is None:
            replicas = None if scaling is not None else 1
        elif scaling is not None:
            raise ValueError(
                f"num_replicas={replicas!r} and autoscaling_config are both set; give one "
                '(num_replicas="auto" takes Ray Serve\'s autoscaling defaults)'
            )
        elif not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ValueError(f'num_replicas must be at least 1 or "auto", got {replicas!r}')
        object.__setattr__(self, "num_replicas", replicas)
        object.__setattr__(self, "autoscaling_config", scaling)
        if self.user_config is not None:
            try:
                json.dumps(self.user_config)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"user_config must be JSON-able (dicts, lists, numbers, "
                                f"strings): {exc}") from None  # fmt: skip
        if self.max_ongoing_requests < 1:
            raise ValueError(
                f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}"
            )
        if self.max_queued_requests is not None and self.max_queued_requests < -1:
            raise ValueError(
                "max_queued_requests must be -1 (no limit) or at least 0, "
                f"got {self.max_queued_requests}"
            )

    @property
    def initial_replicas(self) -> int:
        """How many replicas `run()` starts."""
        if self.autoscaling_config is not None:
            return self.autoscaling_config.initial
        assert isinstance(self.num_replicas, int)
        return self.num_replicas

    @property
    def most_replicas(self) -> int:
        if self.autoscaling_config is not None:
            return self.autoscaling_config.max_replicas
        assert isinstance(self.num_replicas, int)
        return self.num_replicas

    def code_part(self) -> DeploymentConfig:
        """The options a change of which rolls the replicas: those that change live set to
        their defaults (what a version fingerprint covers)."""
        return replace(self, **{name: LIVE_DEFAULTS[name] for name in LIVE_OPTIONS})

    @property
    def queue_limit(self) -> int:
        """How many requests may wait for a replica; -1 for no limit."""
        if self.max_queued_requests is not None:
            return self.max_queued_requests
        return max(MIN_DEFAULT_QUEUE, 2 * self.most_replicas * self.max_ongoing_requests)

    @property
    def queue_rule(self) -> str:
        """The queue limit as an error message names it."""
        if self.max_queued_requests is not None:
            return f"max_queued_requests={self.max_queued_requests}"
        return (
            f"max_queued_requests is not set, so {self.queue_limit}: twice what the "
            f"replicas serve at once, at least {MIN_DEFAULT_QUEUE}"
        )

    def with_options(self, **options: Any) -> DeploymentConfig:
        """A copy with `options` changed. Setting one of `num_replicas` and
        `autoscaling_config` drops the other, unless both are given."""
        known = {f.name for f in fields(self)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(
                f"unknown deployment option(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        if "num_replicas" in options and "autoscaling_config" not in options:
            options["autoscaling_config"] = None
        elif "autoscaling_config" in options and "num_replicas" not in options:
            options["num_replicas"] = None
        return replace(self, **options)


# What `asgiserve.run()` changes without restarting a replica.
LIVE_OPTIONS = (
    "num_replicas",
    "autoscaling_config",
    "user_config",
    "max_ongoing_requests",
    "max_queued_requests",
    "health_check_period_s",
    "health_check_timeout_s",
    "graceful_shutdown_timeout_s",
)
# Their defaults, from the dataclass itself (`num_replicas=None` is read as 1).
LIVE_DEFAULTS: dict[str, Any] = {
    field.name: field.default for field in fields(DeploymentConfig) if field.name in LIVE_OPTIONS
}


@dataclass
class HTTPOptions:
    """How the HTTP server is set up: the `asgiserve` command's settings, flags and config
    file `http_options` alike.

    `graceful_shutdown_timeout_s` is how long the server lets in-flight requests finish
    after SIGTERM or SIGINT; `body_timeout_s` how long a request body may stop arriving
    before the request ends with 408; `max_body_size` the largest request body, in bytes,
    past which the answer is 413; `uds` a Unix socket path to listen on; `status_routes`
    switches the router's `/-/healthz`, `/-/routes`, `/-/status` and `/-/metrics` on or off;
    `ssl_keyfile` and `ssl_certfile` (both or neither) serve HTTPS; `proxy_headers` takes
    the client's address and scheme from `X-Forwarded-For` and `X-Forwarded-Proto` when the
    connection comes from one of `forwarded_allow_ips` (comma-separated, `*` for any), as
    uvicorn does; `reload` restarts the server when a `.py` file (or the config file)
    under `reload_dirs` (default: the app's directory and its modules') changes.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    request_timeout_s: float | None = None
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S
    root_path: str = ""
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
    status_routes: bool = True
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    uds: str | None = None  # a Unix domain socket to listen on instead of host and port
    log_level: str = "info"  # the HTTP server's and asgiserve's
    access_log: bool = True
    log_format: str = "text"  # or "json": one object per line (`asgiserve.logs`)
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    proxy_headers: bool = True
    forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW_IPS
    reload: bool = False
    reload_dirs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # As Serve's variable: the environment wins over the config file and the flags.
        from_env = os.environ.get(KEEP_ALIVE_ENV)
        if from_env:
            try:
                self.keep_alive_timeout_s = float(from_env)
            except ValueError:
                raise ValueError(
                    f"{KEEP_ALIVE_ENV} must be a number of seconds, got {from_env!r}"
                ) from None
        if not self.keep_alive_timeout_s > 0:
            raise ValueError(
                f"keep_alive_timeout_s must be above 0, got {self.keep_alive_timeout_s}"
            )
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be above 0, got {self.request_timeout_s}")
        if self.body_timeout_s is not None and not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be above 0, got {self.body_timeout_s}")
        if not self.graceful_shutdown_timeout_s >= 0:
            raise ValueError(
                "graceful_shutdown_timeout_s must be 0 or more, "
                f"got {self.graceful_shutdown_timeout_s}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if self.max_body_size < 1:
            raise ValueError(f"max_body_size must be at least 1 byte, got {self.max_body_size}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.root_path and not self.root_path.startswith("/"):
            raise ValueError(f"root_path must be empty or start with '/', got {self.root_path!r}")


def backend_from_env() -> str | None:
    return os.environ.get(BACKEND_ENV) or None
