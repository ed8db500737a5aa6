"""Options and their defaults: one place to read what every limit is and how to change it."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_MAX_ONGOING_REQUESTS = 5
DEFAULT_HEALTH_CHECK_PERIOD_S = 10.0
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 30.0
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024  # bytes; larger request bodies get 413

BACKEND_ENV = "ASGISERVE_BACKEND"
KEEP_ALIVE_ENV = "ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S"


@dataclass(frozen=True)
class DeploymentConfig:
    """The options of `@asgiserve.deployment`, kept separate from the user's class."""

    name: str
    num_replicas: int = 1
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    max_queued_requests: int = -1
    backend: Any = None
    ray_actor_options: dict[str, Any] | None = None
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {self.num_replicas}")
        if self.max_ongoing_requests < 1:
            raise ValueError(
                f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}"
            )
        if self.max_queued_requests < -1:
            raise ValueError(
                "max_queued_requests must be -1 (no limit) or at least 0, "
                f"got {self.max_queued_requests}"
            )

    def with_options(self, **options: Any) -> DeploymentConfig:
        known = {f.name for f in fields(self)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(
                f"unknown deployment option(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return replace(self, **options)


@dataclass
class HTTPOptions:
    """How the HTTP server is set up; read by the `asgiserve` command and by `Router`."""

    host: str = "127.0.0.1"
    port: int = 8000
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    request_timeout_s: float | None = None
    root_path: str = ""

    def __post_init__(self) -> None:
        # As Serve's variable: the environment wins over the config file and the flags.
        from_env = os.environ.get(KEEP_ALIVE_ENV)
        if from_env:
            self.keep_alive_timeout_s = float(from_env)


def backend_from_env() -> str | None:
    return os.environ.get(BACKEND_ENV) or None
