"""CPU instructions per request, counted by valgrind: a figure that machine noise cannot move.

    python benchmarks/instructions.py [--apps starlette,asgiserve] [--requests 2000]

Each app runs in memory (as in `asgi_bench.py`, concurrency 1) under
`valgrind --tool=callgrind`, once for a few requests and once for `--requests` more; the
difference in instructions, divided by the difference in requests, is the cost of one
request with interpreter start-up and warm-up cancelled out. Child processes are counted
too (`--trace-children=yes`): a subprocess-backend app's figure is server plus worker.
User-space instructions only: system calls and cache misses are not counted. Needs valgrind
(`apt-get install -y valgrind`); takes about 15 s per app and run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import asgi_bench  # noqa: E402 - needs the path set above
from apps import FACTORIES  # noqa: E402

BASELINE = "starlette"
FEW = 500  # requests in the short run; the long run adds --requests to it


def run_requests(name: str, count: int) -> None:
    """The child: warm up, then exactly `count` requests through app `name`."""
    app = asgi_bench.build(name)

    async def main() -> None:
        await asgi_bench.worker(app, 50)
        await asgi_bench.worker(app, count)
        if "asgiserve" in sys.modules:  # workers exit by themselves, so valgrind counts them
            from asgiserve.backends import subprocess as backend

            backend.EXIT_WAIT_S = 300  # under valgrind a worker takes long to exit
            await sys.modules["asgiserve"].shutdown_async()

    loop = asgi_bench.new_loop()  # uvloop when installed, as in the servers
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def instructions(name: str, count: int) -> int:
    """User-space instructions of a whole child process serving `count` requests, with
    the processes it starts (the subprocess backend's workers)."""
    with tempfile.TemporaryDirectory() as logs:
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            "--trace-children=yes", f"--log-file={logs}/%p.log",
            sys.executable, __file__, "--child", name, str(count),
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, text=True, check=True)
        texts = [path.read_text() for path in Path(logs).iterdir()]  # one per process
    found = [re.search(r"I\s+refs:\s+([\d,]+)", text) for text in texts]
    if not texts or None in found:
        raise RuntimeError("a process has no instruction count in valgrind's output:\n"
                           + "\n".join(texts))  # fmt: skip
    return sum(int(match.group(1).replace(",", "")) for match in found if match is not None)


def per_request(name: str, extra: int) -> float:
    return (instructions(name, FEW + extra) - instructions(name, FEW)) / extra


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="starlette,asgiserve")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--child", nargs=2, metavar=("APP", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_requests(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    names = [name for name in args.apps.split(",") if name]
    unknown = [name for name in names if name not in FACTORIES]
    if unknown:
        parser.error(f"unknown apps {unknown}; choose from {list(FACTORIES)}")
    counts = {name: per_request(name, max(1, args.requests)) for name in names}
    print(f"{'app':<18} {'instructions/request':>20} {'vs ' + BASELINE:>14}")
    for name, count in counts.items():
        ratio = f"{count / counts[BASELINE]:.3f}" if BASELINE in counts else "-"
        print(f"{name:<18} {count:>20,.0f} {ratio:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
