"""One deployment serving both HTTP and Python callers through a shared method.

Ports seed 004, "ServeHandle: Calling Deployments from Python", the `say_hello` example:
`__call__` handles HTTP and delegates to `say_hello`, which handles callers can reach
directly. `@serve.deployment(route_prefix="/api")` plus `Deployment.deploy()` is
`asgiserve.run(Deployment.bind(), route_prefix="/api")`.

Run it:    python examples/http_and_python.py     (serves on :8000 and runs `client`)
Or serve:  uvicorn --app-dir examples http_and_python:app --port 8000
           curl 'http://127.0.0.1:8000/api?name=Alice'   ->  Hello Alice!
"""

import requests
from fastapi import FastAPI

import asgiserve


@asgiserve.deployment
class Deployment:
    def say_hello(self, name: str):
        return f"Hello {name}!"

    def __call__(self, request):
        return self.say_hello(request.query_params["name"])


handle = asgiserve.run(Deployment.bind(), route_prefix="/api")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    """Runs in the serving process: the handle reaches this process's replica."""
    resp = requests.get(f"{base_url}/api?name=Alice")
    assert resp.text == "Hello Alice!"  # a str goes out as text/plain
    print(resp.text)

    assert handle.say_hello.remote("Alice").result() == "Hello Alice!"
    print(handle.say_hello.remote("Alice").result())


if __name__ == "__main__":
    from run_client import run

    run(app, client)
