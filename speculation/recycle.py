"""Token Recycling (Luo et al., 2024): draft from the target's own discarded candidates.

Each verification pass computes the target's distribution at every position and keeps only the
sampled token; the runners-up are "recycled" into an adjacency table token -> its top-K next
tokens, best first. A draft is the chain from the last committed token through each token's best
candidate. The table has one row per vocabulary entry (fixed memory, no training) and is shared by
every request of the replica, so it starts hot for new requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

EMPTY = -1


class RecycleTable:
    """token -> its latest top-K candidate next tokens (EMPTY where none is known yet)."""

    def __init__(self, vocab_size: int, top_k: int = 8) -> None:
        if vocab_size <= 0 or top_k <= 0:
            raise ValueError(f"need vocab_size > 0 and top_k > 0, got {vocab_size}, {top_k}")
        self.table = np.full((vocab_size, top_k), EMPTY, dtype=np.int32)

    def update(self, candidates: Iterable[tuple[int, Sequence[int]]]) -> None:
        """Replace each input token's row with its newest candidates (the paper's update: the
        latest verification overwrites, since context drifts and recent evidence is best)."""
        top_k = self.table.shape[1]
        for token, nexts in candidates:
            row = list(nexts[:top_k])
            self.table[token] = row + [EMPTY] * (top_k - len(row))

    def observe(self, previous: int, tokens: Sequence[int]) -> None:
        """Committed tokens: each is what the target chose after the one before it (its top
        candidate under greedy decoding), so it moves to the front of that token's row."""
        for token in tokens:
            row = self.table[previous]
            if row[0] != token:
                kept = row[row != token][: len(row) - 1]
                self.table[previous] = np.concatenate(
                    ([token], kept, [EMPTY] * (len(row) - 1 - len(kept)))
                )
            previous = token

    def chain(self, last: int, k: int) -> list[int]:
        """Up to k tokens: from `last`, each token's best candidate; stops where none is known."""
        out: list[int] = []
        token = last
        while len(out) < k:
            token = int(self.table[token, 0])
            if token == EMPTY:
                break
            out.append(token)
        return out
