"""Log lines with a time, a level and the request they belong to, as text or JSON.

`RequestFields` adds the application, deployment, replica and request id of the call the
current task serves (`asgiserve.get_request_context()`) to every record, so a replica's
own `logging` calls carry them too. `asgiserve run --log-format` sets the server's lines up
(uvicorn's and Hypercorn's included); a deployment's `logging_config` sets up its worker
processes and actors, whose lines reach the server's stderr one line each, JSON intact.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import IO, TYPE_CHECKING, Any

from asgiserve import context

if TYPE_CHECKING:
    from asgiserve.config import HTTPOptions

ENCODINGS = ("TEXT", "JSON")
FIELDS = ("application", "deployment", "replica", "request_id")
# The router's line per request, with its deployment, replica, request id and duration.
ACCESS_LOGGER = "asgiserve.access"
SERVER_LOGGERS = ("asgiserve", "uvicorn", "uvicorn.error", "hypercorn.error")
ACCESS_LOGGERS = (ACCESS_LOGGER, "uvicorn.access", "hypercorn.access")


@dataclass(frozen=True)
class LoggingConfig:
    """How a deployment's replicas log: `encoding` "TEXT" or "JSON", the level of their
    lines, and whether its requests get an access line (Ray Serve's `LoggingConfig`)."""

    encoding: str = "TEXT"
    log_level: str = "INFO"
    enable_access_log: bool = True

    def __post_init__(self) -> None:
        encoding = str(self.encoding).upper()
        if encoding not in ENCODINGS:
            raise ValueError(f"logging_config encoding must be TEXT or JSON, got {self.encoding!r}")
        level = str(self.log_level).upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(
                "logging_config log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                f"got {self.log_level!r}"
            )
        object.__setattr__(self, "encoding", encoding)
        object.__setattr__(self, "log_level", level)

    @classmethod
    def of(cls, value: LoggingConfig | dict[str, Any] | None) -> LoggingConfig | None:
        if value is None or isinstance(value, LoggingConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"logging_config must be a LoggingConfig or a dict, got {value!r}")
        unknown = set(value) - {"encoding", "log_level", "enable_access_log"}
        if unknown:
            raise ValueError(f"logging_config has no option {sorted(unknown)[0]!r}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestFields(logging.Filter):
    """Puts the request the current task serves on each record (empty outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # the router's access line brings its own
            served = context.get_request_context()
            record.application = served.app_name
            record.deployment = served.deployment
            record.replica = served.replica_id
            record.request_id = served.request_id
        return True


class TextFormatter(logging.Formatter):
    """`2026-12-01 10:00:00,123 INFO asgiserve [app Deployment app#Deployment#1 id] message`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(where)s%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        fields = [getattr(record, name, "") for name in FIELDS]
        named = any(fields) and record.name != ACCESS_LOGGER  # its message names them
        record.where = f"[{' '.join(value or '-' for value in fields)}] " if named else ""
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's fields, and
    the traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, "")
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def handler(encoding: str = "TEXT", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing `encoding` lines, with the request's fields, to `stream` (stderr)."""
    found = logging.StreamHandler(sys.stderr if stream is None else stream)
    found.setFormatter(JSONFormatter() if encoding.upper() == "JSON" else TextFormatter())
    found.addFilter(RequestFields())
    return found


def set_up(
    logger: logging.Logger, encoding: str, level: str | int, stream: IO[str] | None = None
) -> None:
    """Give `logger` our handler alone, at `level`."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler(encoding, stream))
    logger.setLevel(level if isinstance(level, int) else level.upper())
    logger.propagate = False


def set_up_server(options: HTTPOptions) -> None:
    """`asgiserve run`'s lines, asgiserve's own and the HTTP server's, in `--log-format` at
    `--log-level`: the access lines (the server's and the router's) on stdout, the rest on
    stderr. Each server process calls it (`--workers N` spawns fresh ones)."""
    encoding, level = options.log_format.upper(), options.log_level
    for name in SERVER_LOGGERS:
        set_up(logging.getLogger(name), encoding, level)
    access_level = level if options.access_log else "WARNING"
    for name in ACCESS_LOGGERS:
        set_up(logging.getLogger(name), encoding, access_level, sys.stdout)


def set_up_root(options: HTTPOptions) -> None:
    """The root logger, for the app's own lines (in-process replicas' among them), as in
    worker processes; unless the app set logging up itself when it was imported."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler(options.log_format.upper()))
        root.setLevel(options.log_level.upper())


def set_up_replica(config: LoggingConfig | None) -> None:
    """A worker process's or actor's lines, as its deployment's `logging_config` says."""
    chosen = config or LoggingConfig()
    set_up(logging.getLogger(), chosen.encoding, chosen.log_level)
