"""Backends: where replicas run; `"inprocess"`, `"subprocess"` and `"ray"` name them."""

from __future__ import annotations

from asgiserve.backends.base import Backend, Call, Replica, ReplicaSpec
from asgiserve.backends.inprocess import InProcessBackend

__all__ = ["Backend", "Call", "InProcessBackend", "Replica", "ReplicaSpec", "resolve_backend"]

_shared: dict[str, Backend] = {}


def resolve_backend(backend: str | Backend) -> Backend:
    """A backend instance for a name; one shared instance per name per process."""
    if isinstance(backend, Backend):
        return backend
    if backend not in _shared:
        if backend == "inprocess":
            _shared[backend] = InProcessBackend()
        else:
            raise ValueError(
                f"unknown backend {backend!r}; choose one of 'inprocess', 'subprocess', 'ray' "
                "or pass a Backend instance"
            )
    return _shared[backend]
