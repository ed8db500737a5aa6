"""Variable HTTP routes: path parameters in `route_prefix`, typed with Starlette convertors.

Ports seed 003, "Calling Endpoints via HTTP" > "Variable HTTP Routes". The seed's
`serve.create_endpoint("complex", backend="f", route="/api/{user_id:int}/{number:float}")`
is `asgiserve.run(f.bind(), name="complex", route_prefix="/api/{user_id:int}/{number:float}")`;
the parameters arrive in `request.path_params`, converted (`123` an int, `3.14` a float).
The longer prefix wins, so `/api/123/3.14` reaches `complex` and `/api/alice` reaches
`my_endpoint`.

Run it:    python examples/variable_routes.py     (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples variable_routes:app --port 8000
Then:      curl http://127.0.0.1:8000/api/123/3.14   ->  {"user_id":123,"number":3.14,...}
           curl http://127.0.0.1:8000/api/alice      ->  {"username":"alice"}
"""

import requests
from fastapi import FastAPI

import asgiserve


@asgiserve.deployment
def my_backend(request):
    username = request.path_params["username"]
    return {"username": username}


@asgiserve.deployment
def f(request):
    params = request.path_params
    return {
        "user_id": params["user_id"],
        "number": params["number"],
        "types": [type(params["user_id"]).__name__, type(params["number"]).__name__],
    }


asgiserve.run(my_backend.bind(), name="my_endpoint", route_prefix="/api/{username}")
asgiserve.run(f.bind(), name="complex", route_prefix="/api/{user_id:int}/{number:float}")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    resp = requests.get(f"{base_url}/api/123/3.14")
    assert resp.json() == {"user_id": 123, "number": 3.14, "types": ["int", "float"]}
    assert requests.get(f"{base_url}/api/alice").json() == {"username": "alice"}
    # `alice` is no int, so the typed route does not match; the shorter one does.
    assert requests.get(f"{base_url}/api/alice/3.14").json() == {"username": "alice"}
    assert requests.get(f"{base_url}/nothing-here").status_code == 404


if __name__ == "__main__":
    from run_client import run

    run(app, client)
