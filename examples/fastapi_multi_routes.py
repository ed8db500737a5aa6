"""FastAPI ingress with several routes and HTTP methods on one class.

Ports seed 002 (and 000), "FastAPI HTTP Deployments", the second example: `GET /` and
`POST /{subpath}` on two methods that are both named `root` (the second shadows the first
as a class attribute, yet both routes keep working: each route holds its own function).

Run it:    python examples/fastapi_multi_routes.py (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples fastapi_multi_routes:app --port 8000
Then:      curl -X POST http://127.0.0.1:8000/hello/Serve   ->  "Hello from Serve!"
           curl http://127.0.0.1:8000/hello                 ->  "Hello, world!"
"""

import requests
from fastapi import FastAPI

import asgiserve

api = FastAPI()


@asgiserve.deployment
@asgiserve.ingress(api)
class MyFastAPIDeployment:
    @api.get("/")
    def root(self):
        return "Hello, world!"

    @api.post("/{subpath}")
    def root(self, subpath: str):  # noqa: F811 - the seed names both methods `root`
        return f"Hello from {subpath}!"


asgiserve.run(MyFastAPIDeployment.bind(), route_prefix="/hello")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    resp = requests.post(f"{base_url}/hello/Serve")
    assert resp.json() == "Hello from Serve!"
    # Not in the seed: the first `root` still answers GET.
    resp = requests.get(f"{base_url}/hello")
    assert resp.json() == "Hello, world!"
    assert requests.get(f"{base_url}/hello/Serve").status_code == 405


if __name__ == "__main__":
    from run_client import run

    run(app, client)
