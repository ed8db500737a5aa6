"""A vectorised numpy "model" behind `@asgiserve.batch`, with two multiplexed versions.

Each request sends one row of features; the replica stacks the waiting rows and runs one
matrix product for the batch. The header `serve_multiplexed_model_id` picks the weights
("small" or "large"); each replica keeps the ones it has loaded. No seed covers this (the
seeds stop before Ray Serve's `@serve.batch` and `@serve.multiplexed`); see docs/batching.md.

Run it:    python examples/batched_model.py      (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples batched_model:app --port 8000
Then:      curl -X POST localhost:8000/predict -H 'serve_multiplexed_model_id: small' \
               -d '[1, 2, 3, 4]'                         ->  10.0
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from fastapi import FastAPI
from starlette.requests import Request

import asgiserve

WEIGHTS = {"small": np.ones(4), "large": np.arange(1.0, 5.0)}


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=64)
class LinearModel:
    @asgiserve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> np.ndarray:
        if model_id not in WEIGHTS:
            raise ValueError(f"no model {model_id!r}; choose one of {sorted(WEIGHTS)}")
        return WEIGHTS[model_id]

    @asgiserve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, rows: list[np.ndarray]) -> list[float]:
        weights = await self.get_model(asgiserve.get_multiplexed_model_id())
        return [float(value) for value in np.stack(rows) @ weights]

    async def __call__(self, request: Request) -> float:
        row = np.asarray(await request.json(), dtype=float)
        return await self.predict(row)  # type: ignore[no-any-return]


asgiserve.run(LinearModel.bind(), name="linear", route_prefix="/predict")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    def ask(model: str, row: list[float]) -> float:
        headers = {"serve_multiplexed_model_id": model}
        return requests.post(f"{base_url}/predict", json=row, headers=headers).json()

    assert ask("small", [1, 2, 3, 4]) == 10.0
    with ThreadPoolExecutor(16) as pool:  # concurrent requests share batches
        answers = list(pool.map(lambda i: ask("large", [i, 0, 0, 0]), range(32)))
    assert answers == [float(i) for i in range(32)]


if __name__ == "__main__":
    from run_client import run

    run(app, client)
