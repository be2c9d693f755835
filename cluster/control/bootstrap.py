"""Bringing a deployment up: models resolved, pools placed, actors started and checked.

Drafters and targets start at once (the targets' proposers get the drafters' handles and find
where they listen through the target's directory once they are up). Each actor gets
the typed config sections it needs, whole. What the drafters load is checked against the target
before any of it serves: the draft model's vocabulary, EasySpec's layer groups, the EAGLE-3
head's shape, and that the default mode is one the drafters offer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from tandem.cluster.actors.drafter_actor import DrafterInfo, DrafterReplica
from tandem.cluster.actors.target_actor import ReplicaInfo, TargetReplica
from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.config.errors import ConfigError
from tandem.cluster.control.placement import (
    PlacementError,
    Pool,
    cluster_nodes,
    place_pool,
    plan,
    request_for,
)
from tandem.cluster.control.preview import pool_requests
from tandem.models import check_same_vocabulary
from tandem.plugins.engine_setup import piecewise_graphs
from tandem.speculation import registry
from tandem.speculation.eagle_format import HeadError, aux_layers, resolve_head
from tandem.speculation.easyspec import make_groups
from tandem.speculation.protocol import Mode
from tandem.speculation.source import DrafterSetup

log = logging.getLogger("tandem.bootstrap")


@dataclass
class Deployment:
    """The placed pools and what their actors reported when they came up."""

    targets: Pool
    target_infos: list[ReplicaInfo]
    drafters: Pool | None = None
    drafter_infos: list[DrafterInfo] = field(default_factory=list)

    def modes(self) -> tuple[str, ...]:
        """`off`, and the modes every drafter replica offers."""
        offered = [set(info.modes) for info in self.drafter_infos]
        common = set.intersection(*offered) if offered else set()
        return (Mode.OFF.value, *(m for m in registry.mode_names() if m in common))

    def shutdown(self) -> None:
        """Stop the engines cleanly, then free the pools."""
        with contextlib.suppress(Exception):  # a dead replica has nothing left to shut down
            ray.get([a.shutdown.remote() for a in self.targets.actors], timeout=30)
        if self.drafters is not None:
            with contextlib.suppress(Exception):  # nor a dead drafter anything to checkpoint
                ray.get([a.drain.remote() for a in self.drafters.actors], timeout=60)
        for pool in (self.targets, self.drafters):
            if pool is not None:
                pool.destroy()


def start(config: TandemConfig) -> Deployment:
    """Place the drafter and target pools on the connected Ray cluster; wait until ready."""
    # This node's copy, for the checks below; every actor resolves its own on its node.
    model_path = config.models.store().resolve(config.models.target)
    wait_for_nodes(config)  # refuse what cannot fit, before reserving anything
    speculation = config.speculation if config.speculation.enabled else None
    placed: list[Pool] = []
    try:
        drafters, features = None, ()
        if speculation is not None:
            head = eagle_head(config, model_path)
            features = aux_layers(head, model_path) if head is not None else ()
            drafters = start_drafters(config, model_path, head)
            placed.append(drafters)
        target = config.target
        targets = place_pool(
            request_for("target", target),
            TargetReplica,
            target.env,
            lambda i: (
                f"target-{i}",
                config.models,
                target,
                speculation,
                drafters.actors if drafters else [],
                features,
                i,
            ),
            max_restarts=target.max_restarts,
        )
        placed.append(targets)
        drafter_infos = ray.get([a.info.remote() for a in drafters.actors]) if drafters else []
        infos = ray.get([actor.info.remote() for actor in targets.actors])
        deployment = Deployment(targets, infos, drafters, drafter_infos)
        if speculation is not None and speculation.default_mode not in deployment.modes():
            raise ConfigError(
                f"speculation.default_mode: the drafters do not offer "
                f"{speculation.default_mode!r}; they offer {', '.join(deployment.modes())}"
            )
    except Exception:
        for pool in placed:
            pool.destroy()
        raise
    return deployment


def eagle_head(config: TandemConfig, target_path: Path) -> Path | None:
    """The EAGLE-3 head for mode `eagle` (speculation.drafters.eagle_head), checked against the
    target: one that does not fit is refused at start, naming the mismatch."""
    try:
        head = resolve_head(
            config.speculation.drafters.eagle_head, config.models.target, target_path
        )
    except HeadError as exc:
        raise ConfigError(f"speculation.drafters.eagle_head: {exc}") from None
    if head is not None and not config.target.engine_args.get("enforce_eager"):
        try:  # the features come from the compiled forward's outputs, outside any full graph
            piecewise_graphs(config.target.engine_args.get("compilation_config"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return head


def start_drafters(config: TandemConfig, target_path: Path, head: Path | None = None) -> Pool:
    """The drafter pool, with its draft model checked against the target's vocabulary and its
    EAGLE-3 head (already checked against the target, by `eagle_head`)."""
    pool = config.speculation.drafters
    models = config.models
    draft_path = models.store().draft_for(models.target, pool.model, pool.derive_layers)
    if draft_path is not None:
        check_same_vocabulary(target_path, draft_path)
        _check_layer_groups(pool.layer_groups, draft_path)
    # Each drafter resolves its own copy of the draft and the target on its node (models);
    # draft_path and target_path are this node's, checked here.
    setup = DrafterSetup(config.speculation, vocab_size(target_path), draft_path, head, target_path)
    factories = registry.factories()  # tandem's sources and any registered in this process
    return place_pool(
        request_for("drafters", pool),
        DrafterReplica,
        pool.env,
        lambda i: (f"drafter-{i}", setup, factories, config.target.core_binding(), models),
        max_restarts=pool.max_restarts,
    )


def wait_for_nodes(config: TandemConfig) -> None:
    """Check that the pools fit the cluster, waiting up to ray.wait_for_nodes_s for nodes that
    are still joining; then raise the planner's PlacementError naming what is missing."""
    deadline = time.monotonic() + config.ray.wait_for_nodes_s
    while True:
        try:
            plan(pool_requests(config), cluster_nodes())
            return
        except PlacementError as exc:
            if time.monotonic() >= deadline:
                raise
            log.info("waiting for nodes (ray.wait_for_nodes_s): %s", exc)
            time.sleep(2)


def vocab_size(model_path: Path) -> int:
    """The target's vocabulary size (the rows of the Token Recycling table)."""
    return int(json.loads((Path(model_path) / "config.json").read_text())["vocab_size"])


def _check_layer_groups(layer_groups: int | list[int], draft_path: Path) -> None:
    """Explicit group sizes must cover the draft's layers: refused here, not in a drafter actor
    that Ray would restart forever."""
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(draft_path).num_hidden_layers
    try:
        make_groups(layer_groups, layers)
    except ValueError as exc:
        raise ConfigError(f"speculation.drafters.layer_groups: {exc}") from None
