"""Draft-length policy: how many tokens to draft for a request at a given batch size.

Verifying k drafts costs the target k more positions per request. At batch 1 that is nearly free
(a CPU or GPU forward pass of one token is bound by reading the weights); as the batch grows the
forward pass becomes compute-bound and rejected drafts cost real throughput, so drafting shrinks
and finally stops. The two batch sizes come from measurement (`tandem bench --concurrency`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DraftLengthPolicy:
    full_until: int  # batches up to this size draft each request's full k
    off_above: int  # larger batches draft nothing

    def k(self, k: int, batch: int) -> int:
        """The draft length for a request asking k in a step of `batch` requests: k up to
        full_until, then shrinking linearly to 1 at off_above, then 0."""
        if batch <= self.full_until:
            return k
        if batch > self.off_above:
            return 0
        span = self.off_above - self.full_until
        return max(1, round(k * (self.off_above - batch + 1) / (span + 1)))
