"""Ray Serve's noop deployment for http_bench.py: `GET /` answers `{"hello": "world"}`.

Runs only with the competitors venv's python (benchmarks/competitors/setup.sh), never with
the project's: `<venv>/bin/python ray_serve_app.py --port N`. One deployment, Ray Serve's
default settings (one replica, default `max_ongoing_requests` unless
`--max-ongoing-requests N` is given, proxy and logging as they come), its HTTP proxy on
127.0.0.1:N. Blocks until SIGTERM or SIGINT, then shuts Serve and
Ray down so that none of the processes Ray started outlives the measurement.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

# Ray reports usage statistics over the network by default; this machine only talks to
# itself, so turn that off before Ray is imported.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402 - after the environment is set
from ray import serve  # noqa: E402

HOST = "127.0.0.1"
HELLO = {"hello": "world"}


@serve.deployment
class Noop:
    """Does nothing but answer, as the asgiserve deployment under test does."""

    async def __call__(self, request: object) -> dict[str, str]:
        return HELLO


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--max-ongoing-requests", type=int, default=None, help="default: Ray Serve's own"
    )
    return parser.parse_args()


def wait_for_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT (http_bench.py sends one to stop)."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()


def serve_until_signal(deployment: Any, path: str) -> None:
    """Serve `deployment` at `/` on `--port` until SIGTERM or SIGINT, then stop Ray."""
    args = parse_args()
    port = int(args.port)
    if args.max_ongoing_requests is not None:
        deployment = deployment.options(max_ongoing_requests=args.max_ongoing_requests)
    # Ray's own processes (GCS, raylet, workers) talk to each other on the node's address;
    # keep that on loopback too, like the HTTP proxy.
    ray.init(_node_ip_address=HOST)
    try:
        serve.start(http_options={"host": HOST, "port": port})
        serve.run(deployment.bind(), route_prefix="/")
        print(f"ray-serve ready on http://{HOST}:{port}{path}", flush=True)
        wait_for_signal()
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    serve_until_signal(Noop, "/")


if __name__ == "__main__":
    main()
