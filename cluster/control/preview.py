"""`tandem plan`: where each actor of a config would go, checked before anything starts.

It asks the configured Ray cluster for its nodes (or, for the embedded default, describes the
local node the embedded cluster would start with, without starting it) and runs the same
feasibility check and strategy as the service (cluster/control/placement.py), pools in the service's
order: drafters first, then the target.
"""

from __future__ import annotations

import os

from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.control.placement import (
    Assignment,
    Node,
    PlacementError,
    PoolRequest,
    cluster_nodes,
    plan,
    request_for,
)

_HIDDEN = ("memory", "object_store_memory")  # every node has them; they tell nodes apart badly


def pool_requests(config: TandemConfig) -> list[PoolRequest]:
    pools = []
    if config.speculation.enabled:
        pools.append(request_for("drafters", config.speculation.drafters))
    pools.append(request_for("target", config.target))
    return pools


def local_node(config: TandemConfig) -> Node:
    """The node `ray.init` would start for the embedded cluster: its CPUs (or ray.num_cpus), the
    GPUs torch sees, and the configured custom resources."""
    import torch

    resources = {"CPU": float(config.ray.num_cpus or os.cpu_count() or 1)}
    if torch.cuda.is_available():
        resources["GPU"] = float(torch.cuda.device_count())
    resources.update(config.ray.resources)
    return Node("embedded", "127.0.0.1, not started", resources)


def nodes_for(config: TandemConfig, address: str | None) -> list[Node]:
    """The nodes of the cluster at `address`, or the local node of an embedded cluster."""
    if not address:
        return [local_node(config)]
    import ray

    try:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    except ConnectionError as exc:
        raise PlacementError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        return cluster_nodes()
    finally:
        ray.shutdown()


def format_plan(assignments: list[Assignment], nodes: list[Node]) -> list[str]:
    lines = [f"{len(nodes)} node(s):"]
    for node in nodes:
        lines.append(f"  {_node_name(node)}  offers {_amounts(node.resources)}")
    lines.append(f"{len(assignments)} actor(s):")
    for a in assignments:
        lines.append(
            f"  {a.pool}[{a.replica}]  on {_node_name(a.node)}  takes {_amounts(a.bundle)}"
        )
    return lines


def _node_name(node: Node) -> str:
    return f"node {node.node_id[:12]} ({node.address})"


def _amounts(resources: dict[str, float]) -> str:
    shown = sorted(
        (k, v) for k, v in resources.items() if k not in _HIDDEN and not k.startswith("node:")
    )
    return ", ".join(f"{k}={v:g}" for k, v in shown)


def run_plan(config: TandemConfig, address: str | None) -> list[str]:
    """The plan's lines; raises PlacementError naming the missing resource."""
    nodes = nodes_for(config, address)
    return format_plan(plan(pool_requests(config), nodes), nodes)
