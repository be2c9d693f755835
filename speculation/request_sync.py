"""Per-request state of the proposer's side: what the request asked for (`RequestSpec`) and how far
its drafter replica is in sync with the target (`RequestSync`): tokens and features are sent
once, so a drafter that lost a request starts again from what is sent after that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.speculation.candidates import Candidates
from tandem.speculation.policy import Acceptance
from tandem.speculation.protocol import Outcome
from tandem.speculation.session_stats import SpeculationStats


@dataclass(frozen=True)
class RequestSpec:
    mode: str  # a Mode, or a registered source's name
    num_speculative_tokens: int  # the request's k, <= speculation.num_speculative_tokens
    pipelined: bool = True  # pre-draft while the target verifies (speculation cache)


@dataclass
class RequestSync:
    """A request as the session tracks it between engine steps: how far its drafter is in sync,
    the draft it was last handed (to look its verification up in the speculation cache), the
    target's candidates and features not sent yet, and its figures."""

    spec: RequestSpec
    replica: int
    synced: int = 0  # committed tokens the drafter is known to hold
    pending: int = 0  # draft length proposed last step; verified if the request is back
    block: tuple[int, ...] = ()  # that draft, for the speculation cache
    block_source: str = ""  # the source that drafted it
    proposed_at: int = 0  # committed tokens when it was proposed (0: no step drafted it)
    cache: dict[Outcome, tuple[int, ...]] = field(default_factory=dict)
    cache_sources: dict[Outcome, str] = field(default_factory=dict)
    candidates: Candidates = ()  # the target's, from the last verification, not yet sent
    draft_length: int = 0  # this step's (the policy's, at most num_speculative_tokens)
    acceptance: Acceptance = field(default_factory=Acceptance)  # for an adaptive draft length
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    # Feature modes: the target's features not sent yet, (first position, rows) in order, and
    # the position after the last one recorded.
    features: list[tuple[int, Any]] = field(default_factory=list)
    features_end: int = 0
    # Whether the next step's features will be used: not while the policy drafts nothing for
    # the request or its drafter is down (they are dropped, and the head starts again after the
    # gap).
    features_wanted: bool = True

    def record_features(self, first: int, rows: Any, committed: int) -> None:
        """Keep a step's feature rows at committed positions the drafter lacks: not the last
        committed token's (the target has not read it yet), nor rejected drafts' after it."""
        start, end = max(first, self.features_end), min(first + len(rows), committed - 1)
        if start < end:
            self.features.append((start, rows[start - first : end - first]))
            self.features_end = end

    def take_features(self) -> tuple[int, Any]:
        """The unsent features (contiguous from their first position), once."""
        if not self.features:
            return 0, None
        first, blocks = self.features[0][0], []
        for start, rows in self.features:
            if start != first + sum(len(b) for b in blocks):
                break  # a gap (a step without its rows): the drafter restarts after it
            blocks.append(rows)
        self.features = self.features[len(blocks) :]
        return first, np.concatenate(blocks)

    def outcome(self, committed: int, last_token: int) -> Outcome | None:
        """How the target verified `block` (proposed last step, maybe empty): accepted drafts
        and the token it emitted after them; None if the request drafted nothing last step."""
        accepted = committed - self.proposed_at - 1
        if not self.proposed_at or not 0 <= accepted <= len(self.block):
            return None
        return accepted, last_token
