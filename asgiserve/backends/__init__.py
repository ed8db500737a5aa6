"""Backends: where replicas run; `"inprocess"`, `"subprocess"` and `"ray"` name them."""

from __future__ import annotations

from typing import Any

from asgiserve.backends.base import Backend, Call, Replica, ReplicaSpec
from asgiserve.backends.inprocess import InProcessBackend

__all__ = [
    "Backend",
    "Call",
    "InProcessBackend",
    "RayBackend",
    "Replica",
    "ReplicaSpec",
    "SubprocessBackend",
    "resolve_backend",
]


def __getattr__(name: str) -> Any:
    """Other backends are imported when first named, keeping `import asgiserve` light."""
    if name == "SubprocessBackend":
        from asgiserve.backends.subprocess import SubprocessBackend

        return SubprocessBackend
    if name == "RayBackend":
        from asgiserve.backends.ray import RayBackend

        return RayBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_shared: dict[str, Backend] = {}
_given: list[Backend] = []  # instances passed in by the user, closed with the shared ones


def close_backends() -> None:
    """Release what every backend used here holds (a Ray started here is stopped)."""
    for backend in [*_shared.values(), *_given]:
        backend.close()
    _given.clear()


def stop_starting() -> None:
    """End the replicas still starting on every backend used here that can end them."""
    for backend in [*_shared.values(), *_given]:
        backend.stop_starting()


def resolve_backend(backend: str | Backend) -> Backend:
    """A backend instance for a name; one shared instance per name per process."""
    if isinstance(backend, Backend):
        if backend not in _given:
            _given.append(backend)
        return backend
    if backend not in _shared:
        if backend == "inprocess":
            _shared[backend] = InProcessBackend()
        elif backend == "subprocess":
            from asgiserve.backends.subprocess import SubprocessBackend

            _shared[backend] = SubprocessBackend()
        elif backend == "ray":
            from asgiserve.backends.ray import RayBackend

            _shared[backend] = RayBackend()
        else:
            raise ValueError(
                f"unknown backend {backend!r}; choose one of 'inprocess', 'subprocess', 'ray' "
                "or pass a Backend instance"
            )
    return _shared[backend]
