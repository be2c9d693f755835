"""GetStats' answer, built from the figures: the coordinator gathers them (its own `Counters`, each
replica's `ReplicaFigures` and `DrafterLoad`), this module writes the message, so the coordinator
holds no protobuf field names and the figures' fields come from figure_tables.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Protocol

from tandem.cluster.telemetry.figure_tables import DRAFTERS, LEARNING, stat_fields
from tandem.cluster.telemetry.figures import (
    Breakdown,
    Counters,
    DrafterFigures,
    DrafterLoad,
    ReplicaFigures,
    ratio,
)
from tandem.protos import tandem_pb2 as pb


class Placed(Protocol):
    """Where a replica runs (the actors' ReplicaInfo and DrafterInfo have it)."""

    replica_id: str
    node_id: str


class PlacedTarget(Placed, Protocol):
    engine_cpus: list[int]


def stats_message(
    counters: Counters,
    in_flight: int,
    targets: Sequence[tuple[PlacedTarget, int, ReplicaFigures | None]],
    drafters: Sequence[tuple[Placed, DrafterLoad]],
) -> pb.Stats:
    """GetStats: the coordinator's counters, and per target replica its placement, the requests
    routed there and not finished, and its figures (None while it is down)."""
    replicas = [figures for _, _, figures in targets if figures is not None]
    return pb.Stats(
        speculation=counters.speculation.to_proto(),
        target_step_mean_s=ratio(
            sum(r.engine.step_s for r in replicas), sum(r.engine.steps for r in replicas)
        ),
        breakdown=Breakdown.of(replicas, counters.delivery).to_proto(),
        **stat_fields(DRAFTERS, DrafterFigures.of(replicas)),
        drafters=[drafter_stats(info, load) for info, load in drafters],
        requests_in_flight=in_flight,
        requests_total=counters.requests_total,
        requests_finished=counters.requests_finished,
        requests_aborted=counters.requests_aborted,
        requests_failed=counters.requests_failed,
        requests_rejected=counters.requests_rejected,
        prompt_tokens=counters.prompt_tokens,
        generated_tokens=counters.generated_tokens,
        uptime_s=time.monotonic() - counters.started,
        replicas=[replica_stats(*target) for target in targets],
    )


def replica_stats(
    info: PlacedTarget, outstanding: int, figures: ReplicaFigures | None
) -> pb.ReplicaStats:
    stats = pb.ReplicaStats(
        replica_id=info.replica_id,
        node_id=info.node_id,
        outstanding=outstanding,
        up=figures is not None,
        engine_cpus=info.engine_cpus,
    )
    if figures is not None:
        stats.engine_unfinished = figures.engine_unfinished
        stats.requests_served = figures.requests_served
        stats.generated_tokens = figures.generated_tokens
        for name, value in dataclasses.asdict(figures.gauges).items():  # the same names
            setattr(stats, name, value)
    return stats


def drafter_stats(info: Placed, load: DrafterLoad) -> pb.DrafterStats:
    return pb.DrafterStats(
        replica_id=info.replica_id,
        node_id=info.node_id,
        requests=load.requests,
        mirror_hints_used=load.mirror_hints_used,
        **stat_fields(LEARNING, load.learning),
    )
