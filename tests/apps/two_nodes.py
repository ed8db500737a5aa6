"""A server on a local two-node Ray cluster (`ray.cluster_utils.Cluster`) whose second
node the test kills: `python tests/apps/two_nodes.py PORT`.

`pinned` prefers the second node (soft node affinity, so its replacements may go to the
head once that node is gone); `steady` stays on the head. Ray's own node health check is
tightened so a dead node is known in about 1.5 s instead of 15.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from starlette.requests import Request

import asgiserve
from asgiserve.backends import RayBackend

NODE_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
REPLICA_HEALTH = {"health_check_period_s": 0.5, "health_check_timeout_s": 2.0}


class Where:
    async def __call__(self, request: Request) -> dict[str, Any]:
        import ray

        await asyncio.sleep(float(request.query_params.get("sleep", 0)))
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def main(port: int) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": NODE_HEALTH},
    )
    second = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    head_id = cluster.head_node.node_id
    backend = RayBackend(address=cluster.address)

    def placed(node_id: str, soft: bool) -> dict[str, Any]:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=soft)}

    pinned = asgiserve.deployment(
        Where, name="Pinned", num_replicas=2, max_ongoing_requests=20,
        ray_actor_options=placed(second.node_id, soft=True), **REPLICA_HEALTH,
    )  # fmt: skip
    steady = asgiserve.deployment(
        Where, name="Steady", ray_actor_options=placed(head_id, soft=False), **REPLICA_HEALTH
    )
    asgiserve.run(pinned.bind(), name="pinned", route_prefix="/pinned", backend=backend)
    asgiserve.run(steady.bind(), name="steady", route_prefix="/steady", backend=backend)

    app = FastAPI(lifespan=asgiserve.router.lifespan)

    @app.get("/nodes")
    def nodes() -> dict[str, str]:
        return {"head": head_id, "second": second.node_id}

    @app.post("/kill-second-node")
    def kill_second_node() -> str:
        cluster.remove_node(second, allow_graceful=False)
        return "killed"

    app.mount("/", asgiserve.router)
    try:
        uvicorn.run(app, port=port, log_level="warning")
    finally:
        import ray

        ray.shutdown()  # the cluster will not stop under a connected driver
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
