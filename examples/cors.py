"""CORS and other Starlette middleware, on the router or on an ingress app.

Ports seed 003, "Calling Endpoints via HTTP" > "Enabling CORS and other HTTP middlewares".
Serve's `serve.start(http_options={"middlewares": [...]})` is
`asgiserve.Router(middleware=[...])`: every application on that router gets it. A
FastAPI ingress app can carry its own middleware as well (`api.add_middleware`).

Run it:    python examples/cors.py                (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples cors:app --port 8000
Then:      curl -i -H 'Origin: http://example.com' http://127.0.0.1:8000/
           curl -i -H 'Origin: http://allowed.example' http://127.0.0.1:8000/strict/
"""

import requests
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

import asgiserve

# The seed's form: middleware for everything this router serves.
router = asgiserve.Router(
    middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])]
)


@asgiserve.deployment
class Hello:
    def __call__(self, request):
        return {"hello": "world"}


asgiserve.run(Hello.bind(), name="hello", route_prefix="/", router=router)

# The other form: middleware on an ingress app, for that application only.
api = FastAPI()
api.add_middleware(CORSMiddleware, allow_origins=["http://allowed.example"], allow_methods=["GET"])


@asgiserve.deployment
@asgiserve.ingress(api)
class Strict:
    @api.get("/")
    def root(self):
        return "strict"


asgiserve.run(Strict.bind(), name="strict", route_prefix="/")  # on the default router

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/strict", asgiserve.router)  # the default router, without CORS, under /strict
app.mount("/", router)  # the router with CORS: everything else


def client(base_url: str) -> None:
    origin = {"Origin": "http://example.com"}
    resp = requests.get(f"{base_url}/", headers=origin)
    assert resp.json() == {"hello": "world"}
    assert resp.headers["access-control-allow-origin"] == "*"
    preflight = requests.options(
        f"{base_url}/",
        headers={**origin, "Access-Control-Request-Method": "PUT"},
    )
    assert preflight.status_code == 200
    assert "PUT" in preflight.headers["access-control-allow-methods"]

    allowed = {"Origin": "http://allowed.example"}
    resp = requests.get(f"{base_url}/strict/", headers=allowed)
    assert resp.json() == "strict"
    assert resp.headers["access-control-allow-origin"] == "http://allowed.example"
    resp = requests.get(f"{base_url}/strict/", headers=origin)
    assert "access-control-allow-origin" not in resp.headers


if __name__ == "__main__":
    from run_client import run

    run(app, client)
