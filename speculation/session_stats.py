"""What a speculation session counts: drafts the target verified (per request, and summed over
the session), drafter round trips and faults, time in the proposer. The target replica reports
them (tandem.cluster.telemetry.figures sums them over replicas).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class SourceCounts:
    """One draft source's verified drafts: how many tokens it drafted, how many were accepted
    (by the verification's outcome, before vLLM cuts a run at max_tokens or a stop)."""

    draft_tokens: int = 0
    accepted_tokens: int = 0

    def add(self, other: SourceCounts) -> None:
        self.draft_tokens += other.draft_tokens
        self.accepted_tokens += other.accepted_tokens


def sum_sources(*by_source: Mapping[str, SourceCounts]) -> dict[str, SourceCounts]:
    """Per-source counts added up, source by source (new objects: the inputs stay as they are)."""
    total: dict[str, SourceCounts] = {}
    for counts in by_source:
        for name, c in counts.items():
            total.setdefault(name, SourceCounts()).add(c)
    return total


@dataclass
class SpeculationStats:
    """Drafts the target verified. Accepted tokens are counted where the output is (the target
    replica): vLLM may cut an accepted run short at max_tokens or a stop token."""

    draft_tokens: int = 0
    drafts: int = 0  # verification rounds that carried a draft
    cache_hits: int = 0  # steps whose draft came from the speculation cache
    cache_misses: int = 0  # pipelined steps whose outcome the drafter had not pre-drafted
    skipped_waits: int = 0  # of those, steps that went on without a draft: waiting did not pay
    # By the source that drafted (a mode's own, or those `auto` chose).
    sources: dict[str, SourceCounts] = field(default_factory=dict)

    def add(self, other: SpeculationStats) -> None:
        self.draft_tokens += other.draft_tokens
        self.drafts += other.drafts
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses
        self.skipped_waits += other.skipped_waits
        self.sources = sum_sources(self.sources, other.sources)

    def verified(self, source: str, drafted: int, accepted: int) -> None:
        """A draft of `source` was verified: `accepted` of its `drafted` tokens held."""
        self.sources.setdefault(source, SourceCounts()).add(SourceCounts(drafted, accepted))


@dataclass
class SessionStats:
    speculation: SpeculationStats
    steps: int  # engine steps that called a drafter
    mean_rtt_s: float  # drafter round trip per such step
    p50_rtt_s: float
    failures: int  # drafter calls that failed (an error, a dead drafter)
    drafters_down: int
    propose_s: float = 0.0  # time in `propose`, the round trips and waits included
    predraft_wait_s: float = 0.0  # of which waiting for pre-drafted blocks
    timeouts: int = 0  # drafter calls that missed the time budget (not faults)
    feature_bytes: int = 0  # target features sent to drafters (feature modes)


@dataclass(frozen=True)
class LearningStats:
    """A drafter replica's online learning of its EAGLE-3 head
    (tandem.speculation.online_learner); all zero while it is off."""

    head_version: int = 0  # versions kept since the head was trained offline (0: as shipped)
    updates_kept: int = 0  # updates the guard let serve
    updates_rolled_back: int = 0  # updates that drafted worse on held-back traffic
    # Accepted tokens per drafted token on the held-back requests at the last update: the
    # version serving before it, and the update's own.
    window_acceptance: float = 0.0
    candidate_acceptance: float = 0.0
    buffer_tokens: int = 0  # positions held for training
    learn_s: float = 0.0  # time learning held the drafter's core (training and the guard)
    slice_max_s: float = 0.0  # its longest hold: the most a draft waited for learning
