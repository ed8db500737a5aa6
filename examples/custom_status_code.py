"""Custom HTTP status codes: return a Starlette `Response` and it goes out as it is.

Ports seed 003, "Calling Endpoints via HTTP" > "Custom HTTP response status codes".
`serve.create_backend("hello", f)` becomes `asgiserve.run(f.bind(), ...)`; a function
deployment's single argument is the Starlette request. The seed's 123 is a 1xx code, which both
httpx and curl take for an interim response (and wait past), so the check below asks with
`requests`, as the seed's client does.

Run it:    python examples/custom_status_code.py  (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples custom_status_code:app --port 8000
Then:      python -c "import requests; print(requests.get('http://127.0.0.1:8000/').status_code)"
           ->  123
"""

import requests
from fastapi import FastAPI
from starlette.responses import Response

import asgiserve


@asgiserve.deployment
def f(starlette_request):
    return Response("Hello, world!", status_code=123, media_type="text/plain")


asgiserve.run(f.bind(), name="hello")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    # `requests` accepts the seed's 1xx final status (httpx refuses one).
    resp = requests.get(f"{base_url}/")
    assert resp.status_code == 123


if __name__ == "__main__":
    from run_client import run

    run(app, client)
