"""A FastAPI ingress deployment: `GET /hello` reaches the class's `root` method.

Ports seed 002 (and 000), "FastAPI HTTP Deployments", the first example: `@serve.ingress`
over a FastAPI app with one class-based route, served under `route_prefix="/hello"`.
Serve's `serve.run(..., route_prefix="/hello")` is `asgiserve.run(..., route_prefix=...)`.
The seed calls its ingress app `app`; here it is `api`, because `app` is the app you serve.

Run it:    python examples/fastapi_hello.py       (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples fastapi_hello:app --port 8000
Then:      curl http://127.0.0.1:8000/hello       ->  "Hello, world!"
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


asgiserve.run(MyFastAPIDeployment.bind(), route_prefix="/hello")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    resp = requests.get(f"{base_url}/hello")
    assert resp.json() == "Hello, world!"


if __name__ == "__main__":
    from run_client import run

    run(app, client)
