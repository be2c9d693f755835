"""Placing pools of actors on Ray resources.

Each pool gets one placement group with one bundle per replica, taken from the config, so a pool
lands on whatever the cluster offers under that name: CPU here, GPU, or a custom resource such as
{"npu": 1} elsewhere. An impossible request is refused with the missing resource named, instead of
waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class PlacementError(RuntimeError):
    pass


@dataclass
class Pool:
    """A placed pool: its placement group and one actor handle per bundle."""

    name: str
    group: PlacementGroup
    actors: list[Any]

    def destroy(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)


@dataclass(frozen=True)
class Node:
    """A Ray node as placement sees it: an id, an address and its total resources."""

    node_id: str
    address: str
    resources: dict[str, float]


@dataclass(frozen=True)
class PoolRequest:
    """What a pool asks for: `replicas` copies of `bundle`, placed by `strategy` (lower case)."""

    name: str
    bundle: dict[str, float]
    replicas: int
    strategy: str


@dataclass(frozen=True)
class Assignment:
    pool: str
    replica: int
    node: Node
    bundle: dict[str, float]


def request_for(name: str, pool: Any) -> PoolRequest:
    """The placement request of a pool config section (target, speculation.drafters)."""
    return PoolRequest(name, pool.bundle(), pool.replicas, pool.strategy)


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster."""
    return [
        Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"]))
        for n in ray.nodes()
        if n["Alive"]
    ]


def check_feasible(pool: PoolRequest, nodes: list[Node]) -> None:
    """Refuse a pool that no node of the cluster could ever hold, naming the missing resource."""
    for resource, amount in pool.bundle.items():
        best = max((n.resources.get(resource, 0.0) for n in nodes), default=0.0)
        if best < amount:
            raise PlacementError(
                f"{pool.name}: a replica needs {resource}={amount:g} but the largest node offers "
                f"{best:g}; add nodes with {resource!r} or lower {pool.name}.resources"
            )
    if pool.strategy == "strict_spread":
        fitting = sum(_fits(n.resources, pool.bundle) for n in nodes)
        if fitting < pool.replicas:
            raise PlacementError(
                f"{pool.name}: strict_spread needs {pool.replicas} nodes that each fit "
                f"{pool.bundle}, the cluster has {fitting}"
            )


def plan(pools: list[PoolRequest], nodes: list[Node]) -> list[Assignment]:
    """Where each replica of each pool goes, pools placed in order on what earlier ones left,
    following each strategy as Ray's scheduler does (pack: fewest nodes; spread: most nodes;
    strict_*: one node, or distinct nodes). Ray has the last word; this answers "can it fit, and
    roughly where" before anything starts."""
    free = {n.node_id: dict(n.resources) for n in nodes}
    assignments = []
    for pool in pools:
        check_feasible(pool, nodes)
        used: list[str] = []
        for replica in range(pool.replicas):
            node = _choose(pool, nodes, free, used)
            for resource, amount in pool.bundle.items():
                free[node.node_id][resource] -= amount
            used.append(node.node_id)
            assignments.append(Assignment(pool.name, replica, node, pool.bundle))
    return assignments


def _choose(pool: PoolRequest, nodes: list[Node], free: dict, used: list[str]) -> Node:
    candidates = [n for n in nodes if _fits(free[n.node_id], pool.bundle)]
    if pool.strategy == "strict_spread":
        candidates = [n for n in candidates if n.node_id not in used]
    elif pool.strategy == "strict_pack" and used:
        candidates = [n for n in candidates if n.node_id == used[0]]
    if not candidates:
        short = [
            f"{r}={a:g} (largest free: {max(free[n.node_id].get(r, 0.0) for n in nodes):g})"
            for r, a in pool.bundle.items()
            if all(free[n.node_id].get(r, 0.0) < a for n in nodes)
        ]
        missing = ", ".join(short) or f"{pool.bundle} on a node of its own"
        raise PlacementError(
            f"{pool.name}: replica {len(used)} of {pool.replicas} does not fit ({pool.strategy}): "
            f"it needs {missing} once the replicas placed before it hold theirs"
        )
    if pool.strategy in ("pack", "strict_pack"):
        return min(candidates, key=lambda n: (n.node_id not in used, -used.count(n.node_id)))
    return min(candidates, key=lambda n: used.count(n.node_id))


def _fits(free: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(free.get(r, 0.0) >= a for r, a in bundle.items())


def place_pool(
    pool: PoolRequest,
    actor_class: type,
    env: dict[str, str],
    args_for: Any,
    timeout_s: float = 120.0,
    **options: Any,
) -> Pool:
    """Reserve the pool's bundles and start one actor in each; `args_for(i)` gives its args,
    `options` go to the actors (e.g. max_restarts). Check with `plan` first."""
    name, bundle, replicas = pool.name, pool.bundle, pool.replicas
    group = placement_group(
        [dict(bundle)] * replicas, strategy=pool.strategy.upper(), name=f"tandem-{name}"
    )
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        free = {k: v for k, v in ray.available_resources().items() if k in bundle}
        raise PlacementError(
            f"{name}: {replicas} x {bundle} could not be reserved within {timeout_s:.0f}s; "
            f"free now: {free} (other pools or jobs hold the rest)"
        ) from None
    remote_class = ray.remote(actor_class)
    actors = [
        remote_class.options(
            **actor_resources(bundle),
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, i),
            runtime_env={"env_vars": dict(env)},
            **options,
        ).remote(*args_for(i))
        for i in range(replicas)
    ]
    return Pool(name, group, actors)


def actor_resources(bundle: dict[str, float]) -> dict[str, Any]:
    """Ray actor options that consume a whole bundle."""
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    options: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    if "memory" in bundle:
        options["memory"] = bundle["memory"]
    if custom:
        options["resources"] = custom
    return options
