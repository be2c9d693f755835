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


def check_feasible(name: str, bundle: dict[str, float], replicas: int, strategy: str) -> None:
    """Refuse a pool that no node of the cluster could ever hold, naming the missing resource."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for resource, amount in bundle.items():
        best = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        if best < amount:
            raise PlacementError(
                f"{name}: a replica needs {resource}={amount:g} but the largest node offers "
                f"{best:g}; add nodes with {resource!r} or lower {name}.resources"
            )
    if strategy == "STRICT_SPREAD":
        fitting = sum(all(n.get(r, 0.0) >= a for r, a in bundle.items()) for n in nodes)
        if fitting < replicas:
            raise PlacementError(
                f"{name}: STRICT_SPREAD needs {replicas} nodes that each fit {bundle}, "
                f"the cluster has {fitting}"
            )


def place_pool(
    name: str,
    actor_class: type,
    bundle: dict[str, float],
    replicas: int,
    strategy: str,
    env: dict[str, str],
    args_for: Any,
    timeout_s: float = 120.0,
    **options: Any,
) -> Pool:
    """Reserve `replicas` bundles and start one actor in each; `args_for(i)` gives its args,
    `options` go to the actors (e.g. max_restarts)."""
    check_feasible(name, bundle, replicas, strategy)
    group = placement_group([dict(bundle)] * replicas, strategy=strategy, name=f"tandem-{name}")
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
