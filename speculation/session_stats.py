"""What a speculation session counts: drafts the target verified (per request, and summed over
the session), drafter round trips and faults, time in the proposer. The target replica reports
them (tandem.cluster.telemetry.figures sums them over replicas).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpeculationStats:
    """Drafts the target verified. Accepted tokens are counted where the output is (the target
    replica): vLLM may cut an accepted run short at max_tokens or a stop token."""

    draft_tokens: int = 0
    drafts: int = 0  # verification rounds that carried a draft
    cache_hits: int = 0  # steps whose draft came from the speculation cache
    cache_misses: int = 0  # pipelined steps that had to draft just in time

    def add(self, other: SpeculationStats) -> None:
        self.draft_tokens += other.draft_tokens
        self.drafts += other.drafts
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses


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
