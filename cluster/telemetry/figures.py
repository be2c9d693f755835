"""What tandem counts, and the sums of it: one module that GetStats and Prometheus both read
(named and described per surface in figure_tables.py).

A target replica reports a `RequestFigures` with each finished request and a `ReplicaFigures`
when asked; the coordinator sums the requests' figures in `Counters`; `DrafterFigures` sums the
replicas' speculation sessions (round trips, failures, cache hits). `Breakdown` says where the
time of serving goes, from the servers' own timers: inside vLLM's engine step, in tandem's
proposer, and on the way from the engine to the front door (the bench prints it per system).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tandem.cluster.telemetry.figure_tables import SPECULATION, stat_fields
from tandem.plugins.engine_gauges import EngineGauges
from tandem.plugins.timers import EngineTimes, Sums
from tandem.protos import tandem_pb2 as pb
from tandem.speculation.session_stats import (
    LearningStats,
    SessionStats,
    SourceCounts,
    sum_sources,
)


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


@dataclass(frozen=True)
class RequestFigures:
    """What speculation did for one request (counted on its target replica), or for many
    (their sum, `+`, whose mode is empty)."""

    mode: str = ""
    target_steps: int = 0  # target forward passes that produced tokens
    draft_tokens: int = 0  # tokens the drafter proposed and the target verified
    accepted_tokens: int = 0  # of those, accepted (each step yields its accepted drafts + 1)
    drafts: int = 0  # verification rounds that carried a draft
    cache_hits: int = 0  # steps whose draft came from the speculation cache
    cache_misses: int = 0  # pipelined steps whose outcome was not pre-drafted
    skipped_waits: int = 0  # of those, steps that did not wait for a just-in-time draft
    accepted_per_pos: tuple[int, ...] = ()  # accepted drafts by position in the draft
    # By the source that drafted (a mode's own; in mode auto, each source it chose).
    sources: Mapping[str, SourceCounts] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        return ratio(self.accepted_tokens, self.draft_tokens)

    @property
    def mean_accepted_length(self) -> float:
        """Output tokens per target forward pass (1.0 without drafts)."""
        return ratio(self.accepted_tokens + self.target_steps, self.target_steps)

    def __add__(self, other: RequestFigures) -> RequestFigures:
        ours, theirs = list(self.accepted_per_pos), list(other.accepted_per_pos)
        width = max(len(ours), len(theirs))
        ours += [0] * (width - len(ours))
        theirs += [0] * (width - len(theirs))
        counts = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("mode", "accepted_per_pos", "sources")
        }
        return RequestFigures(
            **counts,
            accepted_per_pos=tuple(a + b for a, b in zip(ours, theirs, strict=True)),
            sources=sum_sources(self.sources, other.sources),
        )

    def to_proto(self) -> pb.SpeculationStats:
        return pb.SpeculationStats(
            **stat_fields(SPECULATION, self),
            sources={
                name: pb.SourceStats(
                    draft_tokens=c.draft_tokens,
                    accepted_tokens=c.accepted_tokens,
                    acceptance_rate=ratio(c.accepted_tokens, c.draft_tokens),
                )
                for name, c in self.sources.items()
            },
        )


@dataclass(frozen=True)
class DeliveryTimes(Sums):
    """The way from a target replica's engine thread to the front door (the coordinator's)."""

    batches: int = 0  # output batches (one per engine step) received from the replicas
    stream_s: float = 0.0  # replica -> coordinator on the output socket (same clock: same node)
    chunks: int = 0  # per-request chunks handed to the front door
    coordinator_s: float = 0.0  # from a batch's arrival to its chunk's front door


@dataclass(frozen=True)
class WireTraffic(Sums):
    """The messages a target replica's proposer sent its drafters, and the replies."""

    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass(frozen=True)
class ReplicaFigures:
    """A target replica's state and totals (TargetReplica.stats)."""

    replica_id: str
    engine_unfinished: int  # requests the engine still holds
    requests_served: int
    generated_tokens: int
    engine: EngineTimes = EngineTimes()
    session: SessionStats | None = None  # None without speculation
    wire: WireTraffic = WireTraffic()
    gauges: EngineGauges = EngineGauges()  # vLLM's scheduler: KV cache, queue, prefix cache


@dataclass
class Counters:
    """The coordinator's running sums over the requests it served."""

    requests_total: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    requests_failed: int = 0
    requests_rejected: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    speculation: RequestFigures = field(default_factory=RequestFigures)  # summed
    finished_by_reason: dict[str, int] = field(default_factory=dict)  # stop, length, abort
    delivery: DeliveryTimes = DeliveryTimes()
    started: float = field(default_factory=time.monotonic)

    def add(self, figures: RequestFigures) -> None:
        self.speculation = self.speculation + figures


@dataclass(frozen=True)
class DrafterFigures:
    """The drafter exchange, summed over the target replicas' speculation sessions."""

    steps: int = 0  # engine steps that called a drafter
    rtt_total_s: float = 0.0
    rtt_p50_s: float = 0.0  # the slowest replica's median
    failures: int = 0  # drafter calls that failed (an error, a dead drafter)
    timeouts: int = 0  # drafter calls that missed their time budget (late, not failed)
    drafters_down: int = 0
    cache_hits: int = 0
    feature_bytes: int = 0  # target features sent (feature modes)

    @classmethod
    def of(cls, replicas: Sequence[ReplicaFigures]) -> DrafterFigures:
        """The sessions' sums: a field named as one of SessionStats' is that field summed."""
        sessions = [r.session for r in replicas if r.session is not None]
        derived = {
            "rtt_total_s": sum(s.mean_rtt_s * s.steps for s in sessions),
            "rtt_p50_s": max((s.p50_rtt_s for s in sessions), default=0.0),
            "cache_hits": sum(s.speculation.cache_hits for s in sessions),
        }
        summed = {
            f.name: sum(getattr(s, f.name) for s in sessions)
            for f in dataclasses.fields(cls)
            if f.name not in derived
        }
        return cls(**summed, **derived)

    @property
    def rtt_mean_s(self) -> float:
        return ratio(self.rtt_total_s, self.steps)


@dataclass(frozen=True)
class DrafterLoad:
    """A drafter replica's state (DrafterReplica.stats)."""

    requests: int  # per-request histories it holds
    mirror_hints_used: int  # Mirror-SD hints that steered pre-drafting in time
    learning: LearningStats = LearningStats()  # online learning of its EAGLE-3 head


@dataclass(frozen=True)
class Breakdown(Sums):
    """Where the time of serving goes, summed over the target replicas (GetStats' `breakdown`,
    Prometheus' tandem_serving_seconds). Per engine step: vLLM's step is scheduling, forward
    and sampling, tandem's proposer (its drafter round trip and its wait for pre-drafts
    included), and output processing (scheduler update, detokenization); between two steps the
    engine thread hands outputs on. Per output batch: the hand-off to the replica's event loop,
    Ray's stream to the coordinator, the coordinator. The bench divides the difference of two
    reads by steps and tokens."""

    steps: int = 0
    tokens: int = 0
    step_s: float = 0.0
    schedule_s: float = 0.0
    forward_s: float = 0.0  # model forward and sampling, the proposer's share taken out
    proposer_s: float = 0.0
    drafter_round_trips: int = 0  # steps that waited for just-in-time drafts
    drafter_rtt_s: float = 0.0  # of the proposer's: waiting for just-in-time drafts
    predraft_wait_s: float = 0.0  # of the proposer's: waiting for pre-drafted blocks
    output_s: float = 0.0  # the rest of the step: scheduler update, output processing
    between_steps_s: float = 0.0
    deliveries: int = 0
    handoff_s: float = 0.0
    batches: int = 0
    stream_s: float = 0.0
    chunks: int = 0
    coordinator_s: float = 0.0
    drafter_messages: int = 0
    drafter_bytes_sent: int = 0
    drafter_bytes_received: int = 0

    @classmethod
    def of(
        cls, replicas: Sequence[ReplicaFigures], delivery: DeliveryTimes = DeliveryTimes()
    ) -> Breakdown:
        engine = sum((r.engine for r in replicas), EngineTimes())
        wire = sum((r.wire for r in replicas), WireTraffic())
        sessions = [r.session for r in replicas if r.session is not None]
        proposer = sum(s.propose_s for s in sessions)
        return dataclasses.replace(
            cls.from_engine(engine, proposer),
            drafter_round_trips=sum(s.steps for s in sessions),
            drafter_rtt_s=sum(s.mean_rtt_s * s.steps for s in sessions),
            predraft_wait_s=sum(s.predraft_wait_s for s in sessions),
            batches=delivery.batches,
            stream_s=delivery.stream_s,
            chunks=delivery.chunks,
            coordinator_s=delivery.coordinator_s,
            drafter_messages=wire.messages,
            drafter_bytes_sent=wire.bytes_sent,
            drafter_bytes_received=wire.bytes_received,
        )

    @classmethod
    def from_engine(cls, engine: EngineTimes, proposer_s: float = 0.0) -> Breakdown:
        """The engine's part (an in-process engine has no other: the bench's vLLM systems)."""
        return cls(
            steps=engine.steps,
            tokens=engine.tokens,
            step_s=engine.step_s,
            schedule_s=engine.schedule_s,
            forward_s=engine.model_s - proposer_s,
            proposer_s=proposer_s,
            output_s=engine.step_s - engine.schedule_s - engine.model_s,
            between_steps_s=engine.between_s,
            deliveries=engine.deliveries,
            handoff_s=engine.handoff_s,
        )

    def to_proto(self) -> pb.Breakdown:
        return pb.Breakdown(**dataclasses.asdict(self))

    @classmethod
    def from_proto(cls, message: pb.Breakdown) -> Breakdown:
        return cls(**{f.name: getattr(message, f.name) for f in dataclasses.fields(cls)})
