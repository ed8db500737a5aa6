"""`@asgiserve.deployment`, `Deployment.bind()` and the `Application` graph it builds."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, overload

from asgiserve.autoscaling import AutoscalingConfig
from asgiserve.config import (
    DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    DEFAULT_HEALTH_CHECK_PERIOD_S,
    DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    DEFAULT_MAX_ONGOING_REQUESTS,
    DEFAULT_MAX_QUEUED_REQUESTS,
    DeploymentConfig,
)
from asgiserve.logs import LoggingConfig


class Application:
    """A deployment bound to constructor arguments; other Applications among them are
    deployed too and arrive in the replica as `DeploymentHandle`s."""

    def __init__(
        self, deployment: Deployment, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.deployment = deployment
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Application({self.deployment.name!r})"


class Deployment:
    def __init__(
        self,
        target: Callable[..., Any],
        config: DeploymentConfig,
        route_prefix: str | None = None,
    ) -> None:
        self.target = target
        self.config = config
        self.route_prefix = route_prefix

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Deployment({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"deployment {self.name!r} cannot be called directly; use "
            f"asgiserve.run({self.name}.bind(...)) and call it through the handle"
        )

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        inner = unbound((args, kwargs))
        if inner is not None:  # else an AttributeError at request time, far from here
            raise TypeError(
                f"{self.name}.bind() was given the deployment {inner.name!r} itself; bind "
                f"it too, as {inner.name}.bind(...), so that {self.name} gets a handle to it"
            )
        return Application(self, args, kwargs)

    def bind_bare(self) -> Application:
        """`run(Model)`: bound with no arguments, if its constructor needs none."""
        if inspect.isclass(self.target):
            try:
                inspect.signature(self.target).bind()
            except TypeError as exc:
                raise TypeError(
                    f"run() was given the deployment {self.name!r}, whose constructor needs "
                    f"arguments ({exc}); bind them first: asgiserve.run({self.name}.bind(...))"
                ) from None
            except ValueError:  # no signature to read: let the constructor say
                pass
        return self.bind()

    def options(self, **options: Any) -> Deployment:
        route_prefix = options.pop("route_prefix", self.route_prefix)
        return Deployment(self.target, self.config.with_options(**options), route_prefix)


def unbound(value: Any) -> Deployment | None:
    """A `Deployment` among bind arguments (inside lists, tuples and dicts too)."""
    if isinstance(value, Deployment):
        return value
    if isinstance(value, (list, tuple)):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return None
    return next((found for item in items if (found := unbound(item)) is not None), None)


@overload
def deployment(cls_or_fn: Callable[..., Any]) -> Deployment: ...


@overload
def deployment(
    cls_or_fn: None = None,
    *,
    name: str | None = None,
    num_replicas: int | str | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    max_queued_requests: int | None = DEFAULT_MAX_QUEUED_REQUESTS,
    backend: Any = None,
    ray_actor_options: dict[str, Any] | None = None,
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    autoscaling_config: AutoscalingConfig | dict[str, Any] | None = None,
    user_config: Any = None,
    logging_config: LoggingConfig | dict[str, Any] | None = None,
    route_prefix: str | None = None,
) -> Callable[[Callable[..., Any]], Deployment]: ...


def deployment(
    cls_or_fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    num_replicas: int | str | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    max_queued_requests: int | None = DEFAULT_MAX_QUEUED_REQUESTS,
    backend: Any = None,
    ray_actor_options: dict[str, Any] | None = None,
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s: float = DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    autoscaling_config: AutoscalingConfig | dict[str, Any] | None = None,
    user_config: Any = None,
    logging_config: LoggingConfig | dict[str, Any] | None = None,
    route_prefix: str | None = None,
) -> Deployment | Callable[[Callable[..., Any]], Deployment]:
    """Turn a class or function into a deployment; usable bare or with options.

    `route_prefix` here is used when `run()` names none, as older Serve code expects.
    """

    def decorate(target: Callable[..., Any]) -> Deployment:
        config = DeploymentConfig(
            name=name or target.__name__,
            num_replicas=num_replicas,
            max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests,
            backend=backend,
            ray_actor_options=ray_actor_options,
            health_check_period_s=health_check_period_s,
            health_check_timeout_s=health_check_timeout_s,
            graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
            autoscaling_config=autoscaling_config,  # type: ignore[arg-type] # a dict is read
            user_config=user_config,
            logging_config=logging_config,  # type: ignore[arg-type] # a dict is read
        )
        return Deployment(target, config, route_prefix)

    return decorate(cls_or_fn) if cls_or_fn is not None else decorate
