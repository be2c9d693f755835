"""Prompt lookup decoding: draft by copying what followed the latest earlier match of the suffix.

An incremental n-gram index over one request's tokens (prompt and output so far). Lookup tries
the longest n-gram first and, among its earlier occurrences, the most recent one, because recent
text is the best predictor of what comes next (PLD, Saxena 2023; vLLM's ngram proposer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tandem.speculation.candidates import Candidates
from tandem.speculation.source import DrafterSetup, DraftSource, History


class NgramIndex:
    """Maps every n-gram (min_n <= n <= max_n) to the end position of its latest occurrence
    that already has a continuation, so a lookup never matches the suffix with itself."""

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.tokens: list[int] = []
        self._latest: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            # The n-grams ending at the previous position now have a continuation: index them.
            end = len(self.tokens) - 1
            for n in range(self.min_n, min(self.max_n, end + 1) + 1):
                self._latest[tuple(self.tokens[end - n + 1 : end + 1])] = end
            self.tokens.append(token)

    def propose(self, k: int, extra: Sequence[int] = ()) -> list[int]:
        """Up to k tokens that followed the longest, most recent earlier match of the suffix of
        the tokens followed by `extra` (tokens not committed yet: a block under verification,
        for the speculation cache); the index itself is left unchanged."""
        return self.match(k, extra)[1]

    def match(self, k: int, extra: Sequence[int] = ()) -> tuple[int, list[int]]:
        """`propose`'s draft with the length of the n-gram it matched (0: no match): a longer
        match is likelier to continue the same way."""
        if k <= 0:
            return 0, []
        tail = self.tokens[len(self.tokens) - self.max_n :] + list(extra)
        for n in range(min(self.max_n, len(self.tokens) + len(extra)), self.min_n - 1, -1):
            end = self._latest.get(tuple(tail[len(tail) - n :]))
            if end is not None:
                return n, self.tokens[end + 1 : end + 1 + k]
        return 0, []


class NgramSource(DraftSource):
    """Mode `ngram`: prompt lookup over the request's own tokens. The index is built on the
    request's first ngram draft and kept up to date from then on."""

    name = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        NgramIndex(min_n, max_n)  # refuses a bad range now, not on the first draft
        self.min_n = min_n
        self.max_n = max_n

    @classmethod
    def build(cls, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> NgramSource:
        drafters = setup.config.drafters
        return cls(drafters.ngram_min, drafters.ngram_max)

    def index(self, history: History) -> NgramIndex:
        index = history.state.get(self.name)
        if index is None:
            index = history.state[self.name] = NgramIndex(self.min_n, self.max_n)
            index.extend(history.tokens)
        return index

    def observe(self, history: History, new: Sequence[int], candidates: Candidates) -> None:
        index = history.state.get(self.name)
        if index is not None:
            index.extend(new)

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        return self.index(history).propose(k, extra)
