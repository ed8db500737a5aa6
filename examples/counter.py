"""The Counter: a plain deployment whose `__call__` gets a Starlette request.

Ports seeds 000 and 002, "Calling Deployments via HTTP" (the `Counter` that returns
`request.query_params`), with `asgiserve` in place of `ray.serve`. Serve starts its own
HTTP server on :8000; asgiserve mounts its router in an app you serve yourself.

Run it:    python examples/counter.py             (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples counter:app --port 8000
Then:      curl 'http://127.0.0.1:8000/?a=b&c=d'      ->  {"a":"b","c":"d"}
"""

import requests
import starlette.requests
from fastapi import FastAPI

import asgiserve


@asgiserve.deployment
class Counter:
    def __call__(self, request: starlette.requests.Request):
        return request.query_params


asgiserve.run(Counter.bind())

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    """The seed's client code, against `base_url` instead of http://localhost:8000."""
    resp = requests.get(f"{base_url}?a=b&c=d")
    assert resp.json() == {"a": "b", "c": "d"}


if __name__ == "__main__":
    from run_client import run

    run(app, client)
