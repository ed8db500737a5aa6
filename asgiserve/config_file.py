"""The config file `asgiserve run` takes, in the shape Serve users know: `http_options` and
`applications`. YAML (or JSON, which YAML reads too), validated with pydantic so that a
mistake is reported with the file, the field and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from asgiserve.autoscaling import AutoscalingConfig
from asgiserve.config import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_FORWARDED_ALLOW_IPS,
    DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_MAX_BODY_SIZE,
    HTTPOptions,
)
from asgiserve.logs import LoggingConfig

SUFFIXES = (".yaml", ".yml", ".json")

Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, field and line."""


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HTTPOptionsSchema(Schema):
    """`http_options`: how the server listens. Fields left out keep their defaults."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    keep_alive_timeout_s: float = Field(default=DEFAULT_KEEP_ALIVE_TIMEOUT_S, gt=0)
    request_timeout_s: float | None = Field(default=None, gt=0)
    body_timeout_s: float | None = Field(default=DEFAULT_BODY_TIMEOUT_S, gt=0)
    root_path: str = ""
    graceful_shutdown_timeout_s: float = Field(default=DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S, ge=0)
    status_routes: bool = True
    max_body_size: int = Field(default=DEFAULT_MAX_BODY_SIZE, ge=1)
    uds: str | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True
    log_format: Literal["text", "json"] = "text"
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    proxy_headers: bool = True
    forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW_IPS
    reload: bool = False
    reload_dirs: list[str] = Field(default_factory=list)

    @field_validator("root_path")
    @classmethod
    def root_path_is_a_path(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("root_path must be empty or start with '/'")
        return value


BackendName = Literal["inprocess", "subprocess", "ray"]


class DeploymentSchema(Schema):
    """An entry of `deployments`: options for the deployment called `name`, over the ones
    its `@asgiserve.deployment(...)` gives."""

    name: str
    num_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    autoscaling_config: dict[str, Any] | None = None
    user_config: Any = None
    logging_config: dict[str, Any] | None = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = Field(default=None, ge=-1)
    backend: BackendName | None = None
    ray_actor_options: dict[str, Any] | None = None
    health_check_period_s: float | None = Field(default=None, gt=0)
    health_check_timeout_s: float | None = Field(default=None, gt=0)
    graceful_shutdown_timeout_s: float | None = Field(default=None, ge=0)

    @field_validator("autoscaling_config")
    @classmethod
    def valid_autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        AutoscalingConfig.of(value)  # its errors, with this field's place in the file
        return value

    @field_validator("logging_config")
    @classmethod
    def valid_logging(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        LoggingConfig.of(value)
        return value

    def options(self) -> dict[str, Any]:
        """The options the file sets, for `Deployment.options(...)`."""
        return self.model_dump(exclude_unset=True, exclude={"name"})


class ApplicationSchema(Schema):
    """An entry of `applications`: what `asgiserve.run()` would be called with.

    `import_path` names a bound application (`module:app`), or a function that takes
    `args` (a dict) and returns one, as Serve's application builders do.
    """

    name: str = "default"
    route_prefix: str | None = "/"
    import_path: str
    args: dict[str, Any] = Field(default_factory=dict)
    backend: BackendName | None = None
    deployments: list[DeploymentSchema] = Field(default_factory=list)

    @field_validator("import_path")
    @classmethod
    def import_path_names_an_attribute(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("import_path must be 'module:attribute', as in 'main:app'")
        return value

    @field_validator("route_prefix")
    @classmethod
    def prefix_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("route_prefix must start with '/' (or be null: handles only)")
        return value


class ConfigSchema(Schema):
    http_options: HTTPOptionsSchema = HTTPOptionsSchema()
    applications: list[ApplicationSchema] = Field(min_length=1)


@dataclass
class ConfigFile:
    """A validated config file, with the line of every field for later errors."""

    path: Path
    schema: ConfigSchema
    lines: dict[Loc, int]

    def where(self, loc: Loc) -> str:
        """`file, line N: field`, for an error about the field at `loc`."""
        holder = loc
        line = self.lines.get(holder)
        while line is None and holder:  # a missing field: point at what should hold it
            holder = holder[:-1]
            line = self.lines.get(holder)
        place = f"{self.path}, line {line}" if line is not None else str(self.path)
        return f"{place}: {dotted(loc)}" if loc else place

    def http_options(self, **flags: Any) -> HTTPOptions:
        """The file's `http_options` under the flags given (the environment wins over both)."""
        given = self.schema.http_options.model_dump(exclude_unset=True)
        return HTTPOptions(**{**given, **flags})


def dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def is_config_file(target: str) -> bool:
    return target.endswith(SUFFIXES)


def load(path: str | Path) -> ConfigFile:
    """Read and validate a config file; `ConfigError` says what is wrong and where."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    data, lines = parse(path, text)
    try:
        schema = ConfigSchema.model_validate(data)
    except ValidationError as exc:
        config = ConfigFile(path, ConfigSchema.model_construct(), lines)
        raise ConfigError("\n".join(describe(config, error) for error in exc.errors())) from None
    config = ConfigFile(path, schema, lines)
    check_unique(config)
    return config


def parse(path: Path, text: str) -> tuple[Any, dict[Loc, int]]:
    """The document, and the line of each value in it (YAML reads JSON too)."""
    import yaml  # type: ignore[import-untyped]  # only the command needs it, not `import asgiserve`

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML or JSON: {exc.problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file holds a mapping with `applications` (and maybe "
            f"`http_options`), got {type(data).__name__}"
        )
    lines: dict[Loc, int] = {}
    collect_lines(node, (), lines)
    return data, lines


def collect_lines(node: Any, loc: Loc, lines: dict[Loc, int]) -> None:
    import yaml

    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            collect_lines(value, (*loc, key.value), lines)
            lines[(*loc, key.value)] = key.start_mark.line + 1  # the key's line, not the value's
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            collect_lines(item, (*loc, index), lines)


def describe(config: ConfigFile, error: Any) -> str:
    loc: Loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
        known = known_fields(loc[:-1])
        if known:
            message += f" (known: {', '.join(known)})"
    elif error["type"] != "missing":
        message += f" (got {error['input']!r})"
    return f"{config.where(loc)}: {message}"


def known_fields(loc: Loc) -> list[str]:
    """The fields allowed where `loc` points, for an unknown-field message."""
    model: type[BaseModel] = ConfigSchema
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)


def check_unique(config: ConfigFile) -> None:
    """Application names and route prefixes are each used once."""
    names: set[str] = set()
    prefixes: dict[str, str] = {}
    for index, app in enumerate(config.schema.applications):
        if app.name in names:
            where = config.where(("applications", index, "name"))
            raise ConfigError(f"{where}: a second application named {app.name!r}")
        names.add(app.name)
        prefix = app.route_prefix
        if prefix is not None:
            prefix = prefix.rstrip("/") or "/"
            if prefix in prefixes:
                where = config.where(("applications", index, "route_prefix"))
                raise ConfigError(
                    f"{where}: route_prefix {prefix!r} is already used by application "
                    f"{prefixes[prefix]!r}"
                )
            prefixes[prefix] = app.name
