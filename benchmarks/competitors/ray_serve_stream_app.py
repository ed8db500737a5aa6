"""Ray Serve's streaming deployment for stream_bench.py: `GET /stream?n=N` streams N chunks.

Runs only with the competitors venv's python (benchmarks/competitors/setup.sh):
`<venv>/bin/python ray_serve_stream_app.py --port N`. One deployment, Ray Serve's default
settings, whose `__call__` returns the very `StreamingResponse` that stream_apps.py's apps
return (`stream_response`, over its `chunks()` generator: N chunks of 16 bytes), so every
app in stream_bench.py sends the same bytes. Its HTTP proxy listens on 127.0.0.1:N. Blocks
until SIGTERM or SIGINT, then shuts Serve and Ray down, as ray_serve_app.py does.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # ray_serve_app.py, then stream_apps.py

# ray_serve_app turns Ray's usage statistics off before it imports Ray: import it first.
from ray_serve_app import serve_until_signal  # noqa: E402, I001

import stream_apps  # noqa: E402
from ray import cloudpickle, serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import StreamingResponse  # noqa: E402

# The replica runs in a Ray worker whose sys.path does not hold benchmarks/: ship the
# generator there by value with the deployment instead of by module name.
cloudpickle.register_pickle_by_value(stream_apps)
stream_response = stream_apps.stream_response


@serve.deployment
class Streamer:
    """Streams as the apps of stream_apps.py do; no `/sleep` (no cancel latency for Ray)."""

    async def __call__(self, request: Request) -> StreamingResponse:
        return stream_response(request)


def main() -> None:
    serve_until_signal(Streamer, "/stream")


if __name__ == "__main__":
    main()
