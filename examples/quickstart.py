"""The smallest asgiserve app: a deployment mounted in your own FastAPI app.

Run it:  uvicorn --app-dir examples quickstart:app
Then:    curl 'http://127.0.0.1:8000/model?x=4'   and   curl http://127.0.0.1:8000/double/21
"""

from fastapi import FastAPI
from starlette.requests import Request

import asgiserve


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=16)
class Model:
    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, request: Request) -> dict[str, float]:
        x = float(request.query_params.get("x", 1))
        return {"scale": self.scale, "result": self.predict(x)}

    def predict(self, x: float) -> float:
        return x * self.scale


handle = asgiserve.run(Model.bind(2.0), name="model", route_prefix="/model")
app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


@app.get("/double/{x}")
async def double(x: float) -> float:
    return await handle.predict.remote(x)
