"""The server `elastic_bench.py` loads, served by `uvicorn --app-dir benchmarks elastic_app:app`.

`ELASTIC_MODE` chooses the deployment at `/model`: `roll` (2 replicas answering "one"
after 2 ms; `POST /bench/roll` rolls them to new code answering "two"), `step` (50 ms
requests, autoscaled from 1 to 8 replicas), `fixed` (the same with 8 replicas) or `zero`
(autoscaled from 0). `FAULT_BACKEND` picks the backend (subprocess by default).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

import asgiserve
from asgiserve import registry

MODE = os.environ.get("ELASTIC_MODE", "roll")
BACKEND = os.environ.get("FAULT_BACKEND", "subprocess")
STEP_SCALING = {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2,
                "upscale_delay_s": 1, "look_back_period_s": 2}  # fmt: skip


@asgiserve.deployment(name="Model", num_replicas=2, max_ongoing_requests=32)
class One:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.002)
        return "one"


@asgiserve.deployment(name="Model", num_replicas=2, max_ongoing_requests=32)
class Two:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.002)
        return "two"


@asgiserve.deployment(name="Model", autoscaling_config=STEP_SCALING)
class Fifty:
    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.05)
        return "done"


@asgiserve.deployment
class Probe:
    def __call__(self) -> str:
        return "up"


chosen: Any = {
    "roll": One,
    "step": Fifty,
    "fixed": Fifty.options(num_replicas=8),
    "zero": Fifty.options(autoscaling_config={**STEP_SCALING, "min_replicas": 0}),
}[MODE]


def deploy(deployment: Any) -> None:
    asgiserve.run(deployment.bind(), name="model", route_prefix="/model", backend=BACKEND)


deploy(chosen)
app = FastAPI(lifespan=asgiserve.router.lifespan)


@app.post("/bench/roll")
async def roll() -> dict[str, float]:
    """Roll the deployment to new code; how long until the new replicas served, and until
    the old ones had drained and stopped."""
    old = registry.get_scheduler("model", "Model")
    started = time.monotonic()
    await asyncio.to_thread(deploy, Two)
    switched = time.monotonic() - started
    while old.slots or old.health is not None:
        await asyncio.sleep(0.01)
    return {"switched_s": round(switched, 3), "complete_s": round(time.monotonic() - started, 3)}


@app.post("/bench/start")
async def start_one() -> dict[str, float]:
    """How long one replica takes to start here (a deployment of one, built and removed)."""
    started = time.monotonic()
    handle = await asyncio.to_thread(
        asgiserve.run, Probe.bind(), name="probe", route_prefix=None, backend=BACKEND
    )
    await handle.remote()
    took = time.monotonic() - started
    asgiserve.delete("probe")
    return {"replica_start_s": round(took, 3)}


@app.get("/bench/replicas")
async def replicas() -> dict[str, Any]:
    status = asgiserve.status()["applications"]["model"]["deployments"]["Model"]
    return {key: status[key] for key in ("target_replicas", "running_replicas")}


app.mount("/", asgiserve.router)
