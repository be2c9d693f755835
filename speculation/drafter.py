"""The drafter's side of the protocol: per-request state, advanced by committed tokens.

One Drafter serves every mode it has the parts for (an n-gram index and suffix tries always, a
model when one is loaded, a Token Recycling table when the vocabulary size is known, controlled
acceptance only when the benchmark configures it). It is bounded: beyond `max_requests` the least
recently used request is evicted and will be resynced by the proposer on its next step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tandem.speculation.controlled import ControlledDrafter
from tandem.speculation.model_drafter import CacheState, ModelDrafter
from tandem.speculation.ngram import NgramIndex
from tandem.speculation.protocol import (
    DraftItem,
    DraftReply,
    Hint,
    Mode,
    Outcome,
    PredraftPlan,
    PredraftReply,
)
from tandem.speculation.recycle import RecycleTable
from tandem.speculation.suffix import GlobalSuffixes, RequestSuffixes, SuffixDrafter


@dataclass
class RequestState:
    ngram: NgramIndex
    # The first item of a request carries its prompt and first output token. (After a resync
    # the whole history looks like prompt: its output then stays out of the global suffix trie.)
    prompt_len: int
    model: CacheState | None = None
    # The target's latest top candidates after each token of this request (from DraftItem's
    # candidates): the speculation cache's guesses where a draft is rejected.
    candidates: dict[int, tuple[int, ...]] = field(default_factory=dict)
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
    hints: dict[str, Hint] = field(default_factory=dict)  # Mirror-SD, by request
    hints_used: int = 0  # hints that arrived in time to steer pre-drafting
    # Moving average of the time drafting takes per token, by mode (for pre-drafting budgets).
    token_s: dict[Mode, float] = field(default_factory=dict)

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

    def predraft(self, items: list[DraftItem], plan: PredraftPlan) -> list[PredraftReply]:
        """Speculation cache (SSD, PEARL): while the target verifies each item's block, draft
        the next block for its likeliest outcomes, within the plan's budgets.

        First "all accepted" for every item (the likeliest outcome when drafts are any good),
        then rejections, the likeliest of every item before the next likeliest of any. No
        outcome starts that would not end before the deadline (estimated from the time drafting
        has taken per token): a pre-draft that overran would hold up the target's next step.
        """
        deadline = time.perf_counter() + plan.time_s
        states = [self._sync(item) for item in items]
        blocks: list[dict[Outcome, tuple[int, ...]]] = [{} for _ in items]
        for item, state, found in zip(items, states, blocks, strict=True):
            if state is None:
                continue
            # All accepted: one draft of k + 1 guesses the bonus token and the block after it.
            ahead = self._timed_propose(state, item, item.block, item.k + 1)
            if len(ahead) > 1:
                found[(len(item.block), ahead[0])] = tuple(ahead[1:])
        queues = [
            self._rejections(state, item, plan, deadline) if state is not None else []
            for item, state in zip(items, states, strict=True)
        ]
        for rank in range(max(map(len, queues), default=0)):
            for item, state, found, queue in zip(items, states, blocks, queues, strict=True):
                if rank >= len(queue) or len(found) >= plan.outcomes:
                    continue
                if time.perf_counter() + item.k * self.token_s.get(item.mode, 0.0) > deadline:
                    continue  # a cheaper mode's outcome may still fit
                j, token = queue[rank]
                draft = self._timed_propose(state, item, [*item.block[:j], token], item.k)
                if draft:  # an empty entry would only stand in for a just-in-time miss
                    found[(j, token)] = tuple(draft)
        return [
            PredraftReply(item.request_id, found, known=state is not None)
            for item, state, found in zip(items, states, blocks, strict=True)
        ]

    def _timed_propose(
        self, state: RequestState, item: DraftItem, extra: Sequence[int], k: int
    ) -> list[int]:
        """`_propose`, keeping a moving average of the time per drafted token (for budgets)."""
        start = time.perf_counter()
        draft = self._propose(state, item, extra, k)
        if draft:
            per_token = (time.perf_counter() - start) / len(draft)
            last = self.token_s.get(item.mode)
            self.token_s[item.mode] = per_token if last is None else 0.8 * last + 0.2 * per_token
        return draft

    def _rejections(
        self, state: RequestState, item: DraftItem, plan: PredraftPlan, deadline: float
    ) -> list[Outcome]:
        """Rejection outcomes (position j, the token the target emits there), likeliest first."""
        block, fanout = item.block, plan.fanout
        hint = self._await_hint(item, deadline) if plan.await_hint else None
        if hint is not None and len(hint.top) > len(block):
            # Mirror-SD: the early exit says where the block likely breaks (its top token
            # differs from the draft's) and what the target emits there.
            order = sorted(range(len(block)), key=lambda j: hint.top[j][0] == block[j])
            return [
                (j, token)
                for j in order
                for token in [t for t in hint.top[j] if t != block[j]][:fanout]
            ]
        return [
            (j, token)
            for j in range(len(block))
            for token in self._guesses(state, block[j - 1] if j else state.tokens[-1], block[j])[
                :fanout
            ]
        ]

    @staticmethod
    def _guesses(state: RequestState, previous: int, exclude: int) -> list[int]:
        """Likely target tokens after `previous`, other than the draft's: the target's own
        candidates after that token earlier in this request (kept per request, so a request's
        cache never draws on another's)."""
        return [t for t in state.candidates.get(previous, ()) if t != exclude]

    def hint(self, hints: dict[str, Hint]) -> None:
        """Mirror-SD hints, delivered while `predraft` may be waiting for them."""
        self.hints.update(hints)

    def _await_hint(self, item: DraftItem, deadline: float) -> Hint | None:
        while time.perf_counter() < deadline:
            hint = self.hints.get(item.request_id)
            if hint is not None and hint.block == item.block:
                del self.hints[item.request_id]
                self.hints_used += 1
                return hint
            time.sleep(0.0005)
        return None

    def free(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.hints.pop(request_id, None)
            state = self.requests.pop(request_id, None)
            if state is not None:  # its output joins the recent outputs other requests draw on
                self.shared.add(state.tokens[state.prompt_len :])

    def _draft_one(self, item: DraftItem) -> DraftReply:
        state = self._sync(item)
        if state is None:
            return DraftReply(item.request_id, (), known=False)
        return DraftReply(item.request_id, tuple(self._timed_propose(state, item, (), item.k)))

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
        state.candidates.update(item.candidates)
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

    def _propose(
        self, state: RequestState, item: DraftItem, extra: Sequence[int], k: int
    ) -> list[int]:
        """k draft tokens after the request's committed tokens followed by `extra` (uncommitted
        tokens: a block under verification, when pre-drafting)."""
        if item.mode is Mode.OFF:
            return []
        if item.mode is Mode.SUFFIX:
            if state.suffix is None:
                state.suffix = RequestSuffixes(self.suffix_depth)
                state.suffix.extend(state.tokens)
            return self.suffix.propose(state.suffix, self.shared, k, extra)
        if item.mode is Mode.RECYCLE:  # the coordinator refuses modes a drafter lacks
            last = extra[-1] if extra else state.tokens[-1]
            return self.recycle.chain(last, k) if self.recycle else []
        if item.mode is Mode.CONTROLLED:
            if self.controlled is None:
                return []
            return self.controlled.propose([*state.tokens, *extra], state.prompt_len, k)
        if item.mode in (Mode.NGRAM, Mode.HYBRID):
            found = state.ngram.propose(k, extra)
            if found or item.mode is Mode.NGRAM:
                return found
        if self.model is None:  # the coordinator refuses model modes without a model
            return []
        if state.model is None:
            state.model = self.model.new_state()
        return self.model.draft(state.model, state.tokens + list(extra), k)
