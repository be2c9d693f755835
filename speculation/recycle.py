"""Token Recycling (Luo et al., 2024): draft from the target's own discarded candidates.

Each verification pass computes the target's distribution at every position and keeps only the
sampled token; the runners-up are "recycled" into an adjacency table token -> its top-K next
tokens, best first. A draft is the chain from the last committed token through each token's best
candidate. The table has one row per vocabulary entry (fixed memory, no training) and is shared by
every request of the replica, so it starts hot for new requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tandem.speculation.candidates import Candidates
from tandem.speculation.source import DrafterSetup, DraftSource, History

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


class RecycleSource(DraftSource):
    """Mode `recycle`: one table per drafter replica, learning from every request."""

    name = "recycle"

    def __init__(self, vocab_size: int, top_k: int = 8) -> None:
        self.table = RecycleTable(vocab_size, top_k)

    @classmethod
    def build(cls, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> RecycleSource:
        # as many candidates per token as the target shares
        return cls(setup.vocab_size, max(1, setup.config.target_candidates))

    def observe(self, history: History, new: Sequence[int], candidates: Candidates) -> None:
        """The target's top candidates, and its committed output tokens (prompt text is the
        user's, not the target's choice)."""
        self.table.update(candidates)
        had = len(history.tokens) - len(new)
        skip = max(0, history.prompt_len - had, 1 - had)  # the first token has no predecessor
        if skip < len(new):
            previous = new[skip - 1] if skip > 0 else history.tokens[had - 1]
            self.table.observe(previous, new[skip:])

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        return self.table.chain(extra[-1] if extra else history.tokens[-1], k)
