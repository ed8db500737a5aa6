"""The request-cancellation deployments: `startled` and `SnoringSleeper`.

Ports seeds 001 and 002, "Request cancellation": `startled` catches the
`asyncio.CancelledError` raised at its `await` when the client goes away;
`SnoringSleeper` protects `snore()` with `asyncio.shield`, so "ZZZ" is printed even when
the request is cancelled. This module only defines and serves them; what cancellation does
to them is tested with the cancellation work (see DESIGN.md, "Cancellation"), so `client`
only checks that a request that is not cancelled completes.

Run it:    python examples/cancellation.py        (serves on :8000, runs `client`)
Or serve:  uvicorn --app-dir examples cancellation:app --port 8000
Then:      curl http://127.0.0.1:8000/snore                   (prints ZZZ, answers null)
           curl -m 1 http://127.0.0.1:8000/startled           (give up after 1 s)
"""

import asyncio

import requests
from fastapi import FastAPI

import asgiserve


@asgiserve.deployment
async def startled():
    try:
        print("Replica received request!")
        await asyncio.sleep(10000)
    except asyncio.CancelledError:
        # Add custom behavior that should run
        # upon cancellation here.
        print("Request got cancelled!")


@asgiserve.deployment
class SnoringSleeper:
    async def snore(self):
        await asyncio.sleep(1)
        print("ZZZ")

    async def __call__(self):
        try:
            print("SnoringSleeper received request!")

            # Prevent the snore() method from being cancelled
            await asyncio.shield(self.snore())

        except asyncio.CancelledError:
            print("SnoringSleeper's request was cancelled!")


asgiserve.run(startled.bind(), name="startled", route_prefix="/startled")
asgiserve.run(SnoringSleeper.bind(), name="snore", route_prefix="/snore")

app = FastAPI(lifespan=asgiserve.router.lifespan)
app.mount("/", asgiserve.router)


def client(base_url: str) -> None:
    resp = requests.get(f"{base_url}/snore", timeout=10)
    assert resp.status_code == 200 and resp.json() is None


if __name__ == "__main__":
    from run_client import run

    run(app, client)
