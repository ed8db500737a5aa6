"""Bring your own FastAPI app: an existing app served as it is by a deployment.

Ports seed 002 (and 000), "FastAPI HTTP Deployments", the third example: `@serve.ingress`
over an app whose routes are plain functions, on a class with no methods, at
`route_prefix="/"`. The seed notes that OpenAPI docs keep working; the client checks that.
Here the app you serve is a Starlette app that mounts the router.

Run it:    python examples/fastapi_byo_app.py     (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples fastapi_byo_app:app --port 8000
Then:      curl http://127.0.0.1:8000/               ->  "Hello from the root!"
           open http://127.0.0.1:8000/docs
"""

import requests
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

import asgiserve

api = FastAPI()


@api.get("/")
def f():
    return "Hello from the root!"


@asgiserve.deployment
@asgiserve.ingress(api)
class FastAPIWrapper:
    pass


asgiserve.run(FastAPIWrapper.bind(), route_prefix="/")

# The outer app is a plain Starlette app: an outer FastAPI app would answer /docs and
# /openapi.json itself (its own, empty docs) before the mounted router saw them.
app = Starlette(routes=[Mount("/", asgiserve.router)], lifespan=asgiserve.router.lifespan)


def client(base_url: str) -> None:
    resp = requests.get(f"{base_url}/")
    assert resp.json() == "Hello from the root!"
    # Not in the seed: "automatic OpenAPI documentation generation ... should work as-is".
    schema = requests.get(f"{base_url}/openapi.json").json()
    assert "/" in schema["paths"]
    docs = requests.get(f"{base_url}/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


if __name__ == "__main__":
    from run_client import run

    run(app, client)
