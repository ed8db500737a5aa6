"""The collector settings: frozen after a replica starts, unfrozen when it stops, and left
alone with ASGISERVE_GC_FREEZE=0 (the docs page runs the real path on every backend)."""

from __future__ import annotations

import gc

import pytest

import asgiserve
from asgiserve import heap


@asgiserve.deployment
class Counts:
    def frozen(self) -> int:
        return gc.get_freeze_count()


def test_settle_freezes_and_release_unfreezes() -> None:
    gc.unfreeze()
    heap.settle()
    assert gc.get_freeze_count() > 0
    heap.release()
    assert gc.get_freeze_count() == 0


def test_the_setting_leaves_the_collector_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(heap.GC_FREEZE_ENV, "0")
    gc.unfreeze()
    heap.settle()
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("setting, frozen", [("1", True), ("0", False)])
def test_a_worker_process_follows_the_setting(
    monkeypatch: pytest.MonkeyPatch, setting: str, frozen: bool
) -> None:
    monkeypatch.setenv(heap.GC_FREEZE_ENV, setting)  # worker processes inherit it
    handle = asgiserve.run(
        Counts.bind(), name=f"heap{setting}", route_prefix=None, backend="subprocess"
    )
    try:
        assert (handle.frozen.remote().result(timeout_s=30) > 0) is frozen
    finally:
        asgiserve.delete(f"heap{setting}")
