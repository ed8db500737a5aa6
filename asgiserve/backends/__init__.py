"""Backends: where replicas run; `"inprocess"`, `"subprocess"` and `"ray"` name them."""

from __future__ import annotations

from typing import Any

from asgiserve.backends.base import Backend, Call, Replica, ReplicaSpec
from asgiserve.backends.inprocess import InProcessBackend

__all__ = [
    "Backend",
    "Call",
    "InProcessBackend",
    "Replica",
    "ReplicaSpec",
    "SubprocessBackend",
    "resolve_backend",
]


def __getattr__(name: str) -> Any:
    """`SubprocessBackend` is imported when first named, keeping `import asgiserve` light."""
    if name == "SubprocessBackend":
        from asgiserve.backends.subprocess import SubprocessBackend

        return SubprocessBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_shared: dict[str, Backend] = {}


def resolve_backend(backend: str | Backend) -> Backend:
    """A backend instance for a name; one shared instance per name per process."""
    if isinstance(backend, Backend):
        return backend
    if backend not in _shared:
        if backend == "inprocess":
            _shared[backend] = InProcessBackend()
        elif backend == "subprocess":
            from asgiserve.backends.subprocess import SubprocessBackend

            _shared[backend] = SubprocessBackend()
        else:
            raise ValueError(
                f"unknown backend {backend!r}; choose one of 'inprocess', 'subprocess', 'ray' "
                "or pass a Backend instance"
            )
    return _shared[backend]
