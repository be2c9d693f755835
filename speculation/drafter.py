"""The drafter's side of the protocol: per-request histories, advanced by committed tokens, and
the draft sources that propose from them.

One Drafter serves every mode its sources cover (tandem.speculation.registry builds them; the
contract is tandem.speculation.source). It is bounded: beyond `max_requests` the least recently
used request is evicted and will be resynced by the proposer on its next step. With
`drafters.online.enabled` it also records what the target sends for its online learner
(tandem.speculation.online_learner), and holds the learner's `core` while it drafts.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tandem.speculation import feature_codec
from tandem.speculation.protocol import (
    DraftItem,
    DraftReply,
    Hint,
    Mode,
    Outcome,
    PredraftPlan,
    PredraftReply,
)
from tandem.speculation.registry import SourceFactory, build_sources
from tandem.speculation.session_stats import LearningStats
from tandem.speculation.source import Draft, DrafterSetup, DraftJob, DraftSource, History

if TYPE_CHECKING:
    from tandem.speculation.online_learner import OnlineLearner


@dataclass
class Drafter:
    sources: dict[str, DraftSource]  # by mode
    max_requests: int = 1024
    histories: OrderedDict[str, History] = field(default_factory=OrderedDict)
    hints: dict[str, Hint] = field(default_factory=dict)  # Mirror-SD, by request
    hints_used: int = 0  # hints that arrived in time to steer pre-drafting
    # Moving average of the time drafting takes per token, by mode (for pre-drafting budgets).
    token_s: dict[str, float] = field(default_factory=dict)
    learner: OnlineLearner | None = None  # online learning of the EAGLE-3 head

    @classmethod
    def from_setup(cls, setup: DrafterSetup, factories: Mapping[str, SourceFactory]) -> Drafter:
        sources = build_sources(setup, factories)
        learner = _learner(setup, sources)
        if learner is not None:
            learner.start()
        return cls(sources, setup.config.drafters.max_requests, learner=learner)

    def modes(self) -> list[str]:
        return list(self.sources)

    def _core(self) -> contextlib.AbstractContextManager:
        """Held while drafting: the online learner trains only between drafting calls."""
        return self.learner.core if self.learner is not None else contextlib.nullcontext()

    def learning(self) -> LearningStats:
        return self.learner.stats() if self.learner is not None else LearningStats()

    def close(self) -> None:
        """Draining: the learner stops and checkpoints its head."""
        if self.learner is not None:
            self.learner.close()

    def draft(self, items: list[DraftItem]) -> list[DraftReply]:
        with self._core():
            return self._draft(items)

    def _draft(self, items: list[DraftItem]) -> list[DraftReply]:
        start = time.perf_counter()
        histories = [self._sync(item) for item in items]
        drafts = self._propose(
            [
                (item.mode, DraftJob(history, (), item.draft_length)) if history else None
                for item, history in zip(items, histories, strict=True)
            ]
        )
        drafting_s = time.perf_counter() - start
        return [
            DraftReply(item.request_id, tuple(draft), history is not None, draft.source, drafting_s)
            for item, history, draft in zip(items, histories, drafts, strict=True)
        ]

    def predraft(self, items: list[DraftItem], plan: PredraftPlan) -> list[PredraftReply]:
        """Speculation cache (SSD, PEARL): while the target verifies each item's block, draft
        the next block for its likeliest outcomes, within the plan's budgets.

        First "all accepted" for every item (the likeliest outcome when drafts are any good),
        then rejections, the likeliest of every item before the next likeliest of any. No
        outcome starts that would not end before the deadline (estimated from the time drafting
        has taken per token): a pre-draft that overran would hold up the target's next step.
        Each round of outcomes goes to each source as one batch.
        """
        with self._core():
            return self._predraft(items, plan)

    def _predraft(self, items: list[DraftItem], plan: PredraftPlan) -> list[PredraftReply]:
        deadline = time.perf_counter() + plan.time_s
        histories = [self._sync(item) for item in items]
        blocks: list[dict[Outcome, tuple[int, ...]]] = [{} for _ in items]
        sources: list[dict[Outcome, str]] = [{} for _ in items]
        # All accepted: one draft of k + 1 guesses the bonus token and the block after it.
        aheads = self._propose(
            [
                (item.mode, DraftJob(history, item.block, item.draft_length + 1))
                if history
                else None
                for item, history in zip(items, histories, strict=True)
            ]
        )
        for item, found, by, ahead in zip(items, blocks, sources, aheads, strict=True):
            if ahead:
                outcome = (len(item.block), ahead[0])
                found[outcome], by[outcome] = tuple(ahead[1:]), ahead.source
        queues = [
            self._rejections(history, item, plan, deadline, ahead[0] if ahead else None)
            if history
            else []
            for item, history, ahead in zip(items, histories, aheads, strict=True)
        ]
        for rank in range(max(map(len, queues), default=0)):
            jobs, owners, planned_s = [], [], 0.0
            for i, (item, history, queue) in enumerate(zip(items, histories, queues, strict=True)):
                if rank >= len(queue) or len(blocks[i]) >= plan.outcomes:
                    continue
                cost_s = item.draft_length * self.token_s.get(item.mode, 0.0)
                if time.perf_counter() + planned_s + cost_s > deadline:
                    continue  # a cheaper mode's outcome may still fit
                planned_s += cost_s
                j, token = queue[rank]
                extra = (*item.block[:j], token)
                jobs.append((item.mode, DraftJob(history, extra, item.draft_length)))
                owners.append((i, (j, token)))
            for (i, outcome), draft in zip(owners, self._propose(jobs), strict=True):
                # An empty draft is kept too: the target then knows, without asking across
                # the link, that there is nothing to draft after this outcome.
                blocks[i][outcome], sources[i][outcome] = tuple(draft), draft.source
        return [
            PredraftReply(item.request_id, found, history is not None, by)
            for item, history, found, by in zip(items, histories, blocks, sources, strict=True)
        ]

    def _propose(self, jobs: Sequence[tuple[str, DraftJob] | None]) -> list[Draft]:
        """Each job's draft (empty for None or a mode without a source), one batch per source,
        keeping a moving average of the time per drafted token by mode (for budgets)."""
        drafts = [Draft() for _ in jobs]
        by_mode: dict[str, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if job is not None and job[0] in self.sources:
                by_mode[job[0]].append(i)
        for mode, indices in by_mode.items():
            start = time.perf_counter()
            found = self.sources[mode].propose_batch([jobs[i][1] for i in indices])
            drafted = sum(map(len, found))
            if drafted:
                per_token = (time.perf_counter() - start) / drafted
                last = self.token_s.get(mode)
                self.token_s[mode] = per_token if last is None else 0.8 * last + 0.2 * per_token
            for i, draft in zip(indices, found, strict=True):
                drafts[i] = Draft(draft, draft.source if isinstance(draft, Draft) else mode)
        return drafts

    def _rejections(
        self,
        history: History,
        item: DraftItem,
        plan: PredraftPlan,
        deadline: float,
        bonus: int | None,
    ) -> list[Outcome]:
        """The outcomes other than "all accepted, then `bonus`" (the drafter's own guess of the
        token after the block), likeliest first: (j, the token the target emits at position j)
        for a rejection at j < len(block), then other guesses for the token after the block
        (all an empty block has: the target emits one token, which the drafter guesses)."""
        block, fanout = item.block, plan.fanout
        expected = (*block, bonus)  # the token each position's outcome would not be
        hint = self._await_hint(item, deadline) if plan.await_hint and block else None
        if hint is not None and len(hint.top) > len(block):
            # Mirror-SD: the early exit says where the block likely breaks (its top token
            # differs from the draft's) and what the target emits there.
            order = sorted(range(len(block)), key=lambda j: hint.top[j][0] == block[j])
            order.append(len(block))
            return [
                (j, token)
                for j in order
                for token in [t for t in hint.top[j] if t != expected[j]][:fanout]
            ]
        previous = (history.tokens[-1], *block)  # the token before each position
        return [
            (j, token)
            for j in range(len(block) + 1)
            for token in _guesses(history, previous[j], expected[j])[:fanout]
        ]

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
        """Finished requests: each source sees them go (the suffix trie keeps their output)."""
        for request_id in request_ids:
            self.hints.pop(request_id, None)
            history = self.histories.pop(request_id, None)
            if history is not None:
                if self.learner is not None:
                    self.learner.finish(history)
                for source in self.sources.values():
                    source.release(history)

    def _sync(self, item: DraftItem) -> History | None:
        """Bring the request's history up to date; None when there is a gap to resync.
        An evicted request's state goes with its History (sources keep none elsewhere)."""
        history = self.histories.get(item.request_id)
        if history is None:
            if item.start != 0:
                return None
            # The first item of a request carries its prompt and first output token.
            history = History(item.request_id, prompt_len=max(0, len(item.tokens) - 1))
            self.histories[item.request_id] = history
            while len(self.histories) > self.max_requests:
                self.histories.popitem(last=False)
        have = len(history.tokens)
        if item.start > have:
            del self.histories[item.request_id]
            return None
        # Committed tokens never change: a resent overlap is skipped, not compared.
        new = item.tokens[have - item.start :]
        history.tokens.extend(new)
        history.candidates.update(item.candidates)
        if item.features is not None and len(item.features):
            rows = feature_codec.decode(item.features, item.feature_scales)
            history.features.append((item.features_start, rows))
        if self.learner is not None:
            self.learner.record(history)  # before a source takes the features
        for source in self.sources.values():
            source.observe(history, new, item.candidates)
        self.histories.move_to_end(item.request_id)
        return history


def _learner(setup: DrafterSetup, sources: Mapping[str, DraftSource]) -> OnlineLearner | None:
    """The online learner of the EAGLE-3 head, when configured and the drafter has a head
    (imported on use: it imports torch)."""
    online = setup.config.drafters.online
    eagle = sources.get(Mode.EAGLE)
    if not online.enabled or eagle is None or setup.target is None:
        return None
    from tandem.speculation.online_learner import OnlineLearner

    return OnlineLearner(eagle, online, setup.target, setup.config.num_speculative_tokens)


def _guesses(history: History, previous: int, exclude: int | None) -> list[int]:
    """Likely target tokens after `previous`, other than the draft's: the target's own
    candidates after that token earlier in this request (kept per request, so a request's
    cache never draws on another's)."""
    return [t for t in history.candidates.get(previous, ()) if t != exclude]
