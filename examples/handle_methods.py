"""Calling methods other than `__call__` through a handle.

Ports seed 004, "ServeHandle: Calling Deployments from Python" (the `Deployment` with
`method1`), and seed 003, "Calling methods on a Serve backend besides __call__" (the
`StatefulProcessor` with `other_method`). The old `Deployment.deploy()` and
`Deployment.get_handle()` / `serve.get_handle(...)` are one call now: `asgiserve.run`
returns the handle; `ray.get(handle.remote(...))` is `handle.remote(...).result()`
(or `await handle.remote(...)` in async code).

`Deployment` is reachable by handle only (`route_prefix=None`); `StatefulProcessor` also
answers HTTP at /stateful, so both paths meet the same replica state.

Run it:    python examples/handle_methods.py      (serves on :8000 and runs `client`)
Or serve:  uvicorn --app-dir examples handle_methods:app --port 8000
           curl http://127.0.0.1:8000/stateful    ->  {"current":1}
"""

import requests
from fastapi import FastAPI

import asgiserve


@asgiserve.deployment
class Deployment:
    def method1(self, arg):
        return f"Method1: {arg}"

    def __call__(self, arg):
        return f"__call__: {arg}"


handle = asgiserve.run(Deployment.bind(), name="methods", route_prefix=None)


@asgiserve.deployment
class StatefulProcessor:
    def __init__(self):
        self.count = 1

    def __call__(self, request):
        return {"current": self.count}

    def other_method(self, inc):
        self.count += inc
        return True


stateful = asgiserve.run(StatefulProcessor.bind(), name="stateful", route_prefix="/stateful")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    """Runs in the serving process: the handles reach this process's replicas."""
    assert handle.remote("hi").result() == "__call__: hi"  # defaults to __call__
    assert handle.method1.remote("hi").result() == "Method1: hi"  # another method
    assert handle.options(method_name="method1").remote("hi").result() == "Method1: hi"

    assert requests.get(f"{base_url}/stateful").json() == {"current": 1}
    assert stateful.options(method_name="other_method").remote(5).result() is True
    assert requests.get(f"{base_url}/stateful").json() == {"current": 6}


if __name__ == "__main__":
    from run_client import run

    run(app, client)
