from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import asgiserve
from asgiserve.exceptions import BackPressureError


@asgiserve.deployment(num_replicas=3, max_ongoing_requests=2)
class Tracked:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def __call__(self) -> int:
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.01)
        self.active -= 1
        return id(self)

    def peak_seen(self) -> int:
        return self.peak


@pytest.mark.anyio
async def test_replicas_share_the_load_and_respect_max_ongoing(backend: str) -> None:
    handle = asgiserve.run(Tracked.bind(), route_prefix=None)
    replicas = Counter(await asyncio.gather(*(handle.remote() for _ in range(60))))
    assert len(replicas) == 3
    assert min(replicas.values()) >= 5  # power of two choices spreads, never starves
    peaks = await asyncio.gather(*(handle.peak_seen.remote() for _ in range(30)))
    assert max(peaks) <= 2


def test_sync_handlers_do_not_stall_the_loop(http: httpx.Client) -> None:
    @asgiserve.deployment(max_ongoing_requests=4)
    class Mixed:
        def __call__(self, request):  # type: ignore[no-untyped-def]
            if request.query_params.get("slow"):
                time.sleep(2)  # blocks its worker thread, not the replica's event loop
                return {"slow": True}
            return {"fast": True}

    asgiserve.run(Mixed.bind())
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http.get, "/?slow=1")
        time.sleep(0.3)  # the slow call is running by now
        assert http.get("/").json() == {"fast": True}
        assert not slow.done()  # answered while the slow call still holds its thread
        assert slow.result(timeout=20).json() == {"slow": True}


@asgiserve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Busy:
    """Holds its only slot for a while, so a second call queues and a third is refused."""

    async def __call__(self, *args: object) -> str:
        await asyncio.sleep(0.5)
        return "done"


def deployment_status(name: str) -> dict:  # type: ignore[type-arg]
    return asgiserve.status()["applications"]["default"]["deployments"][name]  # type: ignore[no-any-return]


def wait_until(condition) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2000):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError("condition never held")


@pytest.mark.anyio
async def test_queue_limit_raises_backpressure_from_a_handle(backend: str) -> None:
    handle = asgiserve.run(Busy.bind(), route_prefix=None)
    running, waiting = handle.remote(), handle.remote()
    while not deployment_status("Busy")["queued"]:
        await asyncio.sleep(0.005)
    with pytest.raises(BackPressureError, match="max_queued_requests=1"):
        await handle.remote()
    assert [await running, await waiting] == ["done", "done"]


def test_queue_limit_is_503_with_retry_after_over_http(http: httpx.Client) -> None:
    asgiserve.run(Busy.bind())
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(http.get, "/")
        wait_until(lambda: deployment_status("Busy")["replicas"][0]["in_flight"] == 1)
        second = pool.submit(http.get, "/")
        wait_until(lambda: deployment_status("Busy")["queued"] == 1)
        rejected = http.get("/")
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "1"
        assert "max_queued_requests" in rejected.json()["detail"]
        assert first.result(timeout=20).text == "done"
        assert second.result(timeout=20).text == "done"
