"""Plugging deployments into an existing FastAPI web server through handles.

Ports seeds 003 and 004, "Integrating with existing web servers" and "Sync and Async
Handles": the web app keeps its own routes and calls a deployment through a handle,
`await handle.method.remote(...)` from an `async def` endpoint and
`handle.method.remote(...).result()` from a plain `def` one (FastAPI runs it in a worker
thread). The deployment has no route of its own (`route_prefix=None`); the router is
mounted last, so the app's own routes come first.

Run it:    python examples/web_server_integration.py (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples web_server_integration:app --port 8000
Then:      curl 'http://127.0.0.1:8000/predict?text=hello'  ->  {"text":"hello","length":5,...}
"""

import os

import requests
from fastapi import FastAPI

import asgiserve


@asgiserve.deployment(num_replicas=2)
class Model:
    def __init__(self, prefix: str):
        self.prefix = prefix

    def predict(self, text: str):
        return {"text": text, "length": len(text), "replica_pid": os.getpid()}

    async def greet(self, name: str):
        return f"{self.prefix}, {name}"


handle = asgiserve.run(Model.bind("Hello"), name="model", route_prefix=None)

# The existing web application, with routes of its own.
app = FastAPI(lifespan=asgiserve.router.lifespan)


@app.get("/health")
def health():
    return {"ok": True}


@app.get("/predict")
async def predict(text: str):
    return await handle.predict.remote(text)  # async: await the response


@app.get("/greet/{name}")
def greet(name: str):
    return {"greeting": handle.greet.remote(name).result()}  # sync: block on .result()


app.mount("/", asgiserve.router)  # last: every other path goes to asgiserve


def client(base_url: str) -> None:
    assert requests.get(f"{base_url}/health").json() == {"ok": True}
    body = requests.get(f"{base_url}/predict", params={"text": "hello"}).json()
    assert body["text"] == "hello" and body["length"] == 5
    assert requests.get(f"{base_url}/greet/Alice").json() == {"greeting": "Hello, Alice"}
    # The deployment has no HTTP route: the router answers 404 for other paths.
    assert requests.get(f"{base_url}/model").status_code == 404


if __name__ == "__main__":
    from run_client import run

    run(app, client)
