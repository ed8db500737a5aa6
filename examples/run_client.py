"""Run an example end to end in one process: serve its `app`, then run its `client`.

`python examples/counter.py [PORT]` comes here. The examples whose client also calls a
handle need this: a handle reaches the replicas of its own process, so the client must run
where the server runs. (With `uvicorn --app-dir examples counter:app` you serve the app and
use curl or your own client instead.)
"""

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

import asgiserve


def run(app: Any, client: Callable[[str], None]) -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise SystemExit(f"the server did not start on port {port}")
            time.sleep(0.02)
        client(f"http://127.0.0.1:{port}")
        print("client OK")
    finally:
        server.should_exit = True
        thread.join(15)
        asgiserve.shutdown()
