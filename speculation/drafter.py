"""The drafter's side of the protocol: per-request state, advanced by committed tokens.

One Drafter serves every mode it has the parts for (an n-gram index always, a model when one is
loaded). It is bounded: beyond `max_requests` the least recently used request is evicted and will
be resynced by the proposer on its next step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from tandem.speculation.model_drafter import CacheState, ModelDrafter
from tandem.speculation.ngram import NgramIndex
from tandem.speculation.protocol import DraftItem, DraftReply, Mode


@dataclass
class RequestState:
    ngram: NgramIndex
    model: CacheState | None = None

    @property
    def tokens(self) -> list[int]:
        return self.ngram.tokens


@dataclass
class Drafter:
    model: ModelDrafter | None = None
    ngram_min: int = 1
    ngram_max: int = 4
    max_requests: int = 1024
    requests: OrderedDict[str, RequestState] = field(default_factory=OrderedDict)

    def modes(self) -> list[Mode]:
        modes = [Mode.NGRAM]
        if self.model is not None:
            modes += [Mode.MODEL, Mode.HYBRID]
        return modes

    def draft(self, items: list[DraftItem]) -> list[DraftReply]:
        return [self._draft_one(item) for item in items]

    def free(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.requests.pop(request_id, None)

    def _draft_one(self, item: DraftItem) -> DraftReply:
        state = self._sync(item)
        if state is None:
            return DraftReply(item.request_id, (), known=False)
        return DraftReply(item.request_id, tuple(self._propose(state, item)))

    def _sync(self, item: DraftItem) -> RequestState | None:
        """Bring the request's mirror up to date; None when there is a gap to resync."""
        state = self.requests.get(item.request_id)
        if state is None:
            if item.start != 0:
                return None
            state = RequestState(NgramIndex(self.ngram_min, self.ngram_max))
            self.requests[item.request_id] = state
            while len(self.requests) > self.max_requests:
                self.requests.popitem(last=False)
        have = len(state.tokens)
        if item.start > have:
            del self.requests[item.request_id]
            return None
        # Committed tokens never change: a resent overlap is skipped, not compared.
        state.ngram.extend(item.tokens[have - item.start :])
        self.requests.move_to_end(item.request_id)
        return state

    def _propose(self, state: RequestState, item: DraftItem) -> list[int]:
        if item.mode is Mode.OFF:
            return []
        if item.mode in (Mode.NGRAM, Mode.HYBRID):
            found = state.ngram.propose(item.k)
            if found or item.mode is Mode.NGRAM:
                return found
        if self.model is None:  # the coordinator refuses model modes without a model
            return []
        if state.model is None:
            state.model = self.model.new_state()
        return self.model.draft(state.model, state.tokens, item.k)
