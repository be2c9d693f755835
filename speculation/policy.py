"""Draft-length policy: how many tokens to draft for a request at a given batch size and, when
`speculation.draft_length.adaptive` is on, at the request's own acceptance rate.

Verifying k drafts costs the target k more positions per request. At batch 1 that is nearly free
(a CPU or GPU forward pass of one token is bound by reading the weights); as the batch grows the
forward pass becomes compute-bound and rejected drafts cost real throughput, so drafting shrinks
and finally stops. The two batch sizes (speculation.draft_length) come from measurement
(`tandem bench --concurrency`).

Within that bound, a request whose drafts are mostly rejected (sampled at temperature 1.0, free
prose) still pays for every verified position. With `adaptive`, each request drafts the length
that yields the most tokens per unit of target time given its acceptance rate alpha so far
(Leviathan et al., 2023: a step with j drafts yields (1 - alpha^(j+1)) / (1 - alpha) tokens in
expectation, and costs 1 + verify_cost * j one-token steps), down to no drafts at all, with a
one-token probe now and then so that alpha can recover when the text turns repetitive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.speculation.settings import DraftLengthConfig

# Weight of the older drafts at each new verified draft: alpha follows about the last ten.
ALPHA_DECAY = 0.9
# A request drafting nothing drafts one token every this many steps, to keep alpha current.
PROBE_EVERY = 8


def draft_length(policy: DraftLengthConfig, k: int, batch: int) -> int:
    """The draft length for a request asking k in a step of `batch` requests: k up to
    full_until_batch, then shrinking linearly to 1 at off_above_batch, then 0."""
    full, off = policy.full_until_batch, policy.off_above_batch
    if batch <= full:
        return k
    if batch > off:
        return 0
    return max(1, round(k * (off - batch + 1) / (off - full + 1)))


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a verification step with k drafts yields when each draft token is accepted with
    probability alpha, independently: 1 + alpha + ... + alpha^k."""
    return sum(alpha**i for i in range(k + 1))


def best_length(alpha: float, k: int, verify_cost: float) -> int:
    """The draft length in [0, k] with the most expected tokens per unit of target time; the
    shortest among equals."""
    return max(range(k + 1), key=lambda j: expected_tokens(alpha, j) / (1 + verify_cost * j))


def worth_waiting(alpha: float, k: int, wait: float) -> bool:
    """Whether to wait `wait` one-token steps for a k-token draft just in time: it must yield
    at least that much more than the one token the step yields without it. Pipelined requests
    ask this on a speculation-cache miss; what the link adds to the drafter's round trip is the
    wait."""
    return expected_tokens(alpha, k) - 1 >= wait


@dataclass
class Acceptance:
    """One request's acceptance rate alpha, from the drafts the target verified: each accepted
    draft token is a success, the first rejected one a failure (the positions after it are not
    tried). Starts from one of each (alpha 0.5: draft until shown otherwise); older drafts weigh
    less (ALPHA_DECAY)."""

    accepted: float = 1.0
    rejected: float = 1.0
    idle: int = 0  # steps in a row without drafts by this rule
    decay: float = ALPHA_DECAY

    @property
    def alpha(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def observe(self, accepted: int, drafted: int) -> None:
        self.accepted = self.decay * self.accepted + accepted
        self.rejected = self.decay * self.rejected + (accepted < drafted)

    def length(self, k: int, verify_cost: float) -> int:
        """This step's draft length, at most k: `best_length`, or a one-token probe when that
        has been 0 for PROBE_EVERY steps."""
        best = best_length(self.alpha, k, verify_cost)
        self.idle = 0 if best else self.idle + 1
        if self.idle >= PROBE_EVERY:
            self.idle = 0
            return min(k, 1)
        return best
