"""What tandem counts, and the sums of it: one module that GetStats and Prometheus both read.

A target replica reports a `RequestFigures` with each finished request and a `ReplicaFigures`
when asked; the coordinator sums the requests' figures in `Counters`; `DrafterFigures` sums the
replicas' speculation sessions (round trips, failures, cache hits).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tandem.protos import tandem_pb2 as pb
from tandem.speculation.session import SessionStats


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
    cache_misses: int = 0  # pipelined steps drafted just in time
    accepted_per_pos: tuple[int, ...] = ()  # accepted drafts by position in the draft

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
        return RequestFigures(
            target_steps=self.target_steps + other.target_steps,
            draft_tokens=self.draft_tokens + other.draft_tokens,
            accepted_tokens=self.accepted_tokens + other.accepted_tokens,
            drafts=self.drafts + other.drafts,
            cache_hits=self.cache_hits + other.cache_hits,
            cache_misses=self.cache_misses + other.cache_misses,
            accepted_per_pos=tuple(a + b for a, b in zip(ours, theirs, strict=True)),
        )

    def to_proto(self) -> pb.SpeculationStats:
        return pb.SpeculationStats(
            mode=self.mode,
            draft_tokens=self.draft_tokens,
            accepted_tokens=self.accepted_tokens,
            acceptance_rate=self.acceptance_rate,
            mean_accepted_length=self.mean_accepted_length,
            target_steps=self.target_steps,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
        )


@dataclass(frozen=True)
class ReplicaFigures:
    """A target replica's state and totals (TargetReplica.stats)."""

    replica_id: str
    engine_unfinished: int  # requests the engine still holds
    requests_served: int
    generated_tokens: int
    steps: int  # engine steps
    step_time_s: float  # time inside engine.step(), drafting included
    session: SessionStats | None = None  # None without speculation


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
        sessions = [r.session for r in replicas if r.session is not None]
        return cls(
            steps=sum(s.steps for s in sessions),
            rtt_total_s=sum(s.mean_rtt_s * s.steps for s in sessions),
            rtt_p50_s=max((s.p50_rtt_s for s in sessions), default=0.0),
            failures=sum(s.failures for s in sessions),
            timeouts=sum(s.timeouts for s in sessions),
            drafters_down=sum(s.drafters_down for s in sessions),
            cache_hits=sum(s.speculation.cache_hits for s in sessions),
            feature_bytes=sum(s.feature_bytes for s in sessions),
        )

    @property
    def rtt_mean_s(self) -> float:
        return ratio(self.rtt_total_s, self.steps)


@dataclass(frozen=True)
class DrafterLoad:
    """A drafter replica's state (DrafterReplica.stats)."""

    requests: int  # per-request histories it holds
    mirror_hints_used: int  # Mirror-SD hints that steered pre-drafting in time
