"""Updates and autoscaling under load, on the subprocess backend by default.

    python benchmarks/elastic_bench.py                # every figure (about 80 s)
    python benchmarks/elastic_bench.py --only roll,zero

- roll: 2 replicas under wrk at 64 connections; halfway through a run, `asgiserve.run()`
  with new code. Failed requests, p99 of that run against a steady run just before, and
  how long the roll took against one replica's start time;
- step: 32 connections of 50 ms requests on a deployment autoscaled from 1 to 8 replicas
  (`target_ongoing_requests=2`, `upscale_delay_s=1`, `look_back_period_s=2`): the time
  until it runs 8, then its throughput against a fixed 8-replica deployment;
- zero: the first request to a deployment scaled to zero, against one replica's start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from batch_bench import wrk  # noqa: E402 - needs the path set above
from fault_bench import server  # noqa: E402

FIGURES = ("roll", "step", "zero")


def served(mode: str, backend: str) -> Any:
    os.environ["ELASTIC_MODE"] = mode
    return server(backend, "elastic_app:app")


def roll_figures(backend: str) -> dict[str, Any]:
    with served("roll", backend) as (url, _):
        wrk(f"{url}/model", 64, 2)  # warm
        steady = wrk(f"{url}/model", 64, 6)
        start = httpx.post(f"{url}/bench/start", timeout=120).json()
        timings: dict[str, Any] = {}

        def roll_midway() -> None:
            time.sleep(3)
            timings.update(httpx.post(f"{url}/bench/roll", timeout=120).json())

        roller = threading.Thread(target=roll_midway)
        roller.start()
        rolling = wrk(f"{url}/model", 64, 10)
        roller.join()
        after = httpx.get(f"{url}/model").text
    longest_request_s = 0.002
    target_complete = round(start["replica_start_s"] + longest_request_s + 1, 3)
    return {"steady": steady, "during_roll": rolling, **start, **timings,
            "answers_after": after,
            "failed_requests": rolling["errors"], "target_failed": 0,
            "p99_ratio": round(rolling["p99_ms"] / steady["p99_ms"], 2), "target_p99_ratio": 2,
            "target_complete_s": target_complete}  # fmt: skip


def step_figures(backend: str) -> dict[str, Any]:
    with served("step", backend) as (url, _):
        httpx.get(f"{url}/model", timeout=60)
        command = ["wrk", "-t1", "-c32", "-d30s", f"{url}/model"]
        load = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        started = time.monotonic()
        reached = None
        while time.monotonic() - started < 25:
            if httpx.get(f"{url}/bench/replicas").json()["running_replicas"] >= 8:
                reached = round(time.monotonic() - started, 2)
                break
            time.sleep(0.05)
        load.terminate()
        load.wait()
        scaled = wrk(f"{url}/model", 32, 6)
    with served("fixed", backend) as (url, _):
        wrk(f"{url}/model", 32, 2)
        fixed = wrk(f"{url}/model", 32, 6)
    ratio = round(scaled["rps"] / fixed["rps"], 2)
    return {"seconds_to_8_replicas": reached, "autoscaled": scaled, "fixed_8": fixed,
            "throughput_ratio": ratio, "target_ratio": 0.9}  # fmt: skip


def zero_figures(backend: str) -> dict[str, Any]:
    with served("zero", backend) as (url, _):
        start = httpx.post(f"{url}/bench/start", timeout=120).json()
        assert httpx.get(f"{url}/bench/replicas").json()["running_replicas"] == 0
        began = time.monotonic()
        answer = httpx.get(f"{url}/model", timeout=60)
        first = round(time.monotonic() - began, 3)
    return {"first_request_s": first, "status": answer.status_code, **start,
            "target_s": round(start["replica_start_s"] + 0.5, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FIGURES))
    parser.add_argument("--backend", default="subprocess")
    args = parser.parse_args()
    for name in args.only.split(","):
        figures = {"roll": roll_figures, "step": step_figures, "zero": zero_figures}[name]
        print(f"{name}: {json.dumps(figures(args.backend))}", flush=True)


if __name__ == "__main__":
    main()
