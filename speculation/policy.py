"""Draft-length policy: how many tokens to draft for a request at a given batch size.

Verifying k drafts costs the target k more positions per request. At batch 1 that is nearly free
(a CPU or GPU forward pass of one token is bound by reading the weights); as the batch grows the
forward pass becomes compute-bound and rejected drafts cost real throughput, so drafting shrinks
and finally stops. The two batch sizes (speculation.draft_length) come from measurement
(`tandem bench --concurrency`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.cluster.config import DraftLengthConfig


def draft_length(policy: DraftLengthConfig, k: int, batch: int) -> int:
    """The draft length for a request asking k in a step of `batch` requests: k up to
    full_until_batch, then shrinking linearly to 1 at off_above_batch, then 0."""
    full, off = policy.full_until_batch, policy.off_above_batch
    if batch <= full:
        return k
    if batch > off:
        return 0
    return max(1, round(k * (off - batch + 1) / (off - full + 1)))
