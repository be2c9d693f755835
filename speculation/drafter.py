"""The drafter's side of the protocol: per-request state, advanced by committed tokens.

One Drafter serves every mode it has the parts for (an n-gram index and suffix tries always, a
model when one is loaded, a Token Recycling table when the vocabulary size is known, controlled
acceptance only when the benchmark configures it). It is bounded: beyond `max_requests` the least
recently used request is evicted and will be resynced by the proposer on its next step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tandem.speculation.controlled import ControlledDrafter
from tandem.speculation.model_drafter import CacheState, ModelDrafter
from tandem.speculation.ngram import NgramIndex
from tandem.speculation.protocol import DraftItem, DraftReply, Mode
from tandem.speculation.recycle import RecycleTable
from tandem.speculation.suffix import GlobalSuffixes, RequestSuffixes, SuffixDrafter


@dataclass
class RequestState:
    ngram: NgramIndex
    # The first item of a request carries its prompt and first output token. (After a resync
    # the whole history looks like prompt: its output then stays out of the global suffix trie.)
    prompt_len: int
    model: CacheState | None = None
    suffix: RequestSuffixes | None = None  # built on the request's first suffix draft

    @property
    def tokens(self) -> list[int]:
        return self.ngram.tokens


@dataclass
class Drafter:
    model: ModelDrafter | None = None
    ngram_min: int = 1
    ngram_max: int = 4
    max_requests: int = 1024
    suffix: SuffixDrafter = field(default_factory=SuffixDrafter)
    suffix_depth: int = 16  # the tries' depth: the longest pattern plus the longest draft
    suffix_global_tokens: int = 100_000  # recent outputs kept in the shared trie
    recycle: RecycleTable | None = None
    controlled: ControlledDrafter | None = None
    requests: OrderedDict[str, RequestState] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.shared = GlobalSuffixes(self.suffix_depth, self.suffix_global_tokens)

    def modes(self) -> list[Mode]:
        modes = [Mode.NGRAM, Mode.SUFFIX]
        if self.recycle is not None:
            modes.append(Mode.RECYCLE)
        if self.model is not None:
            modes += [Mode.MODEL, Mode.HYBRID]
        if self.controlled is not None:
            modes.append(Mode.CONTROLLED)
        return modes

    def draft(self, items: list[DraftItem]) -> list[DraftReply]:
        return [self._draft_one(item) for item in items]

    def free(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            state = self.requests.pop(request_id, None)
            if state is not None:  # its output joins the recent outputs other requests draw on
                self.shared.add(state.tokens[state.prompt_len :])

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
            state = RequestState(
                NgramIndex(self.ngram_min, self.ngram_max), max(0, len(item.tokens) - 1)
            )
            self.requests[item.request_id] = state
            while len(self.requests) > self.max_requests:
                self.requests.popitem(last=False)
        have = len(state.tokens)
        if item.start > have:
            del self.requests[item.request_id]
            return None
        # Committed tokens never change: a resent overlap is skipped, not compared.
        new = item.tokens[have - item.start :]
        if self.recycle is not None:  # the table learns from every request, whatever its mode
            self._recycle_learn(state, item.candidates, new)
        state.ngram.extend(new)
        if state.suffix is not None:
            state.suffix.extend(new)
        self.requests.move_to_end(item.request_id)
        return state

    def _recycle_learn(
        self,
        state: RequestState,
        candidates: Sequence[tuple[int, Sequence[int]]],
        new: Sequence[int],
    ) -> None:
        """The target's top candidates, and its committed output tokens (prompt text is the
        user's, not the target's choice)."""
        self.recycle.update(candidates)
        have = len(state.tokens)
        skip = max(0, state.prompt_len - have, 1 - have)  # the first output token has a predecessor
        if skip < len(new):
            previous = new[skip - 1] if skip > 0 else state.tokens[-1]
            self.recycle.observe(previous, new[skip:])

    def _propose(self, state: RequestState, item: DraftItem) -> list[int]:
        if item.mode is Mode.OFF:
            return []
        if item.mode is Mode.SUFFIX:
            if state.suffix is None:
                state.suffix = RequestSuffixes(self.suffix_depth)
                state.suffix.extend(state.tokens)
            return self.suffix.propose(state.suffix, self.shared, item.k)
        if item.mode is Mode.RECYCLE:  # the coordinator refuses modes a drafter lacks
            return self.recycle.chain(state.tokens[-1], item.k) if self.recycle else []
        if item.mode is Mode.CONTROLLED:
            if self.controlled is None:
                return []
            return self.controlled.propose(state.tokens, state.prompt_len, item.k)
        if item.mode in (Mode.NGRAM, Mode.HYBRID):
            found = state.ngram.propose(item.k)
            if found or item.mode is Mode.NGRAM:
                return found
        if self.model is None:  # the coordinator refuses model modes without a model
            return []
        if state.model is None:
            state.model = self.model.new_state()
        return self.model.draft(state.model, state.tokens, item.k)
