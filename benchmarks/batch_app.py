"""The server `batch_bench.py` loads: a vectorised model, batched or not, and a
multiplexed one. `BATCH_MODE` (batched, unbatched or models), `FAULT_BACKEND` and
`BATCH_REPLICAS` choose what runs; served by `uvicorn --app-dir benchmarks batch_app:app`.

The model costs 2 ms per call plus 20 us per row and runs one call at a time, as one GPU
would: a lock around a sleep, so it costs the server no CPU and the figures measure the
serving.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

import asgiserve

MODE = os.environ.get("BATCH_MODE", "batched")
BACKEND = os.environ.get("FAULT_BACKEND", "inprocess")
REPLICAS = int(os.environ.get("BATCH_REPLICAS", "1"))
CALL_S, ROW_S = 0.002, 0.00002


class Device:
    """One call at a time, each `CALL_S` plus `ROW_S` per row."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def run(self, rows: int) -> None:
        async with self.lock:
            await asyncio.sleep(CALL_S + ROW_S * rows)


@asgiserve.deployment(max_ongoing_requests=128)
class Unbatched:
    def __init__(self) -> None:
        self.device = Device()

    async def __call__(self, request: Request) -> int:
        await self.device.run(1)
        return 1


@asgiserve.deployment(max_ongoing_requests=128)
class Batched:
    def __init__(self) -> None:
        self.device = Device()

    @asgiserve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def predict(self, rows: list[int]) -> list[int]:
        await self.device.run(len(rows))
        return rows

    async def __call__(self, request: Request) -> int:
        return await self.predict(1)  # type: ignore[no-any-return]


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=64)
class Models:
    def __init__(self) -> None:
        self.loads: list[str] = []

    @asgiserve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        self.loads.append(model_id)
        await asyncio.sleep(0.05)
        return model_id

    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.002)
        return await self.get_model(asgiserve.get_multiplexed_model_id())  # type: ignore[no-any-return]

    def history(self) -> tuple[int, list[str]]:
        return os.getpid(), self.loads


chosen: Any = {"batched": Batched, "unbatched": Unbatched, "models": Models}[MODE]
if MODE != "models":
    chosen = chosen.options(num_replicas=REPLICAS)
handle = asgiserve.run(chosen.bind(), name="model", route_prefix="/model", backend=BACKEND)
app = FastAPI(lifespan=asgiserve.router.lifespan)


@app.get("/bench/loads")
async def loads() -> dict[str, list[str]]:
    """Each replica's loader calls, by pid (asked often enough to reach both)."""
    seen = {}
    for _ in range(40):
        pid, history = await handle.history.remote()
        seen[str(pid)] = history
    return seen


app.mount("/", asgiserve.router)
