"""Keeping long-lived objects out of the garbage collector's way.

A full collection walks every tracked object. In a server that has imported FastAPI and
built a model, that is 20 to 50 ms with the event loop stopped, about twice a second
under load: the slowest requests of every benchmark were the ones caught in it. Once a
replica is built (and when the router starts) the objects alive then are moved out of
the collector's generations with `gc.freeze()`, so a full collection walks only what was
made since. Stopping a replica unfreezes them, so what it leaves in reference cycles is
collected again. `ASGISERVE_GC_FREEZE=0` leaves the collector as Python sets it.
"""

from __future__ import annotations

import gc
import os

GC_FREEZE_ENV = "ASGISERVE_GC_FREEZE"


def enabled() -> bool:
    return os.environ.get(GC_FREEZE_ENV, "1") != "0"


def settle() -> None:
    """Freeze what is alive now: imports, the app, the replica's model."""
    if enabled():
        gc.freeze()


def release() -> None:
    """Unfreeze, so the next full collection finds what a stopped replica left behind."""
    if enabled():
        gc.unfreeze()
