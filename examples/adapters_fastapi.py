"""HTTP adapters in your own FastAPI app, with `Depends`.

Ports seed 000, "Embedded in your existing FastAPI Application": `json_to_ndarray` as a
dependency of the user's own route; its NdArray input schema is in the app's OpenAPI
document. The seed's `...` body is filled in with the array's shape and sum.

Run it:    python examples/adapters_fastapi.py     (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples adapters_fastapi:app --port 8000
Then:      curl -H 'content-type: application/json' \
                -d '{"array": [1, 2, 3, 4], "shape": [2, 2]}' http://127.0.0.1:8000/endpoint
           ->  {"shape":[2,2],"sum":10}
"""

import requests
from fastapi import Depends, FastAPI

from asgiserve.adapters import json_to_ndarray

app = FastAPI()


@app.post("/endpoint")
async def endpoint(np_array=Depends(json_to_ndarray)):
    return {"shape": list(np_array.shape), "sum": np_array.sum().item()}


def client(base_url: str) -> None:
    resp = requests.post(f"{base_url}/endpoint", json={"array": [1, 2, 3, 4], "shape": [2, 2]})
    assert resp.json() == {"shape": [2, 2], "sum": 10}

    resp = requests.post(f"{base_url}/endpoint", json={"array": [[1, 2], [3]]})
    assert resp.status_code == 422
    assert "ragged" in resp.json()["detail"][0]["msg"]

    spec = requests.get(f"{base_url}/openapi.json").json()
    assert "NdArray" in spec["components"]["schemas"]


if __name__ == "__main__":
    from run_client import run

    run(app, client)
