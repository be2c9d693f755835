"""Mode `hybrid`: prompt lookup when it finds a match, the draft model otherwise.

An n-gram match costs microseconds and, where text repeats, is accepted more often than a small
model's guess; the model covers the steps where nothing repeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tandem.speculation.source import Draft, DrafterSetup, DraftSource, History


class HybridSource(DraftSource):
    name = "hybrid"

    def __init__(self, ngram: DraftSource, model: DraftSource) -> None:
        # Shared with modes ngram and model (the same per-request state); the drafter has them
        # observe every request, so this source has nothing to observe itself.
        self.ngram = ngram
        self.model = model

    @classmethod
    def build(cls, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> HybridSource | None:
        if "ngram" not in built or "model" not in built:
            return None
        return cls(built["ngram"], built["model"])

    def propose(self, history: History, extra: Sequence[int], k: int) -> Draft:
        found = self.ngram.propose(history, extra, k)
        if found:
            return Draft(found, self.ngram.name)
        return Draft(self.model.propose(history, extra, k), self.model.name)
