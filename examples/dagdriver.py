"""A model that takes a numpy array, behind a DAGDriver that parses the JSON for it.

Ports seed 000, "HTTP Handling" (the DAGDriver example after the Counter): `Model`
sums the array that `json_to_ndarray` made of the request body. `ray.serve.drivers.DAGDriver`
is `asgiserve.DAGDriver`, `ray.serve.http_adapters` is `asgiserve.adapters`.

Run it:    python examples/dagdriver.py            (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples dagdriver:app --port 8000
Then:      curl -H 'content-type: application/json' -d '{"array": [[1, 2], [2, 3]]}' \
                http://127.0.0.1:8000/   ->  8
           http://127.0.0.1:8000/model/docs shows the NdArray request schema
"""

import numpy as np
import requests
from fastapi import FastAPI

import asgiserve
from asgiserve.adapters import json_to_ndarray


@asgiserve.deployment
class Model:
    def __call__(self, arr: np.ndarray):
        return arr.sum()


asgiserve.run(asgiserve.DAGDriver.bind(Model.bind(), http_adapter=json_to_ndarray))
# The same driver again under /model, where its /docs are not behind the outer app's own.
asgiserve.run(
    asgiserve.DAGDriver.bind(Model.bind(), http_adapter=json_to_ndarray),
    name="model",
    route_prefix="/model",
)

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    resp = requests.post(base_url, json={"array": [[1, 2], [2, 3]]})
    assert resp.json() == 8

    spec = requests.get(f"{base_url}/model/openapi.json").json()
    body = spec["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NdArray"}


if __name__ == "__main__":
    from run_client import run

    run(app, client)
