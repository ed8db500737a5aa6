"""LitServe's noop API for http_bench.py: `POST /predict` answers `{"hello": "world"}`.

Runs only with the competitors venv's python (benchmarks/competitors/setup.sh), never with
the project's: `<venv>/bin/python litserve_app.py --port N`. One LitAPI on LitServe's
default settings: one inference worker on the CPU, one API server process (LitServe's
default of one per worker), its default path `/predict` and method POST with a JSON body
(LitServe parses it before `decode_request`). Stops on SIGTERM or SIGINT with LitServe's
own graceful shutdown of its worker processes.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import litserve as ls

HOST = "127.0.0.1"
HELLO = {"hello": "world"}


class Noop(ls.LitAPI):
    """Does nothing but answer, as the asgiserve deployment under test does."""

    def setup(self, device: str) -> None:
        pass

    def predict(self, x: Any, **kwargs: Any) -> dict[str, str]:
        return HELLO


def parse_port() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    return int(parser.parse_args().port)


def stop_on_sigterm() -> None:
    """LitServe shuts down gracefully on KeyboardInterrupt; make SIGTERM raise it too, in
    this process only: the processes LitServe forks inherit the handler, and it stops them
    with SIGTERM, which must end them as it would without this handler."""
    main_pid = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    port = parse_port()
    stop_on_sigterm()
    server = ls.LitServer(Noop(), accelerator="cpu", workers_per_device=1)
    # No client.py written into the working directory: a side effect, not a setting.
    server.run(host=HOST, port=port, generate_client_file=False)


if __name__ == "__main__":
    main()
