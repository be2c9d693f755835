"""Mode `auto`: per request and step, the draft of the source that promises the most tokens per
unit of the target's time, and no draft when none promises more than decoding alone.

No source wins everywhere (BENCHMARKS.md): prompt lookup wins big where the answer copies the
prompt (extraction, summaries) and costs a wasted verification where it does not; a model-based
drafter (the EAGLE-3 head) always has a guess, rarely a long run of right ones. `auto` composes
the sources the registry built before it:

- the *lookups* (ngram, suffix) are asked first, for every step: a match costs microseconds,
  and comes with evidence of its quality (the length of the n-gram matched; the suffix tries'
  expected accepted length, rounded);
- the *generator* (the EAGLE-3 head) drafts only when chosen: its forward costs time.

Each candidate's acceptance alpha (per draft token, as in tandem.speculation.policy) is this
request's record with that source, shrunk toward this drafter's record across requests for the
source at that evidence (PRIOR_WEIGHT pseudo-drafts). A draft of length L is worth
max over j <= L of expected_tokens(alpha, j) / (1 + verify_cost * j) one-token steps of tokens
(Leviathan et al., 2023; `policy.best_length`), and is cut to that j; the best-worth candidate
wins, a lookup over the generator on equal worth. When nothing is worth more than 1 (decoding
alone), nothing is drafted but a one-token probe every PROBE_EVERY positions, so the records
follow the text when it turns repetitive.

Learning needs no message: auto remembers what it proposed at each position, and when committed
tokens pass that position the proposal whose context matches what was committed is the one the
target verified (pre-drafting proposes for several outcomes); how far it agrees with the
committed tokens is one observation for its source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tandem.speculation.candidates import Candidates
from tandem.speculation.ngram import NgramSource
from tandem.speculation.policy import PROBE_EVERY, Acceptance, best_length, expected_tokens
from tandem.speculation.protocol import Mode
from tandem.speculation.source import (
    Draft,
    DrafterSetup,
    DraftJob,
    DraftSource,
    History,
    common_prefix,
)
from tandem.speculation.suffix import SuffixSource

# How many drafts the drafter's record across requests counts for against a request's own.
PRIOR_WEIGHT = 4.0
# The record across requests follows about the last few hundred verified drafts per key.
SHARED_DECAY = 0.995

Key = tuple[str, int]  # (source, evidence of the draft's quality)


@dataclass(frozen=True)
class Candidate:
    key: Key
    tokens: tuple[int, ...] | None  # None: the generator, which drafts only when chosen
    length: int  # the longest draft it offers


@dataclass(frozen=True)
class Proposed:
    """A draft auto handed out: after `extra` (uncommitted tokens), from `key`."""

    extra: tuple[int, ...]
    key: Key
    tokens: tuple[int, ...]


@dataclass
class AutoState:
    """One request's: its record per source, and its drafts not verified yet."""

    records: dict[str, Acceptance] = field(default_factory=dict)
    proposed: dict[int, list[Proposed]] = field(default_factory=dict)  # by first position


class AutoSource(DraftSource):
    name = Mode.AUTO.value

    def __init__(
        self,
        ngram: NgramSource | None,
        suffix: SuffixSource | None,
        generator: DraftSource | None,
        verify_cost: float,
    ) -> None:
        self.ngram = ngram
        self.suffix = suffix
        self.generator = generator
        self.verify_cost = verify_cost
        self.shared: dict[Key, Acceptance] = {}  # this drafter's record across requests

    @classmethod
    def build(cls, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> AutoSource | None:
        ngram, suffix = built.get(Mode.NGRAM.value), built.get(Mode.SUFFIX.value)
        generator = built.get(Mode.EAGLE.value)
        if ngram is None and suffix is None and generator is None:
            return None
        assert ngram is None or isinstance(ngram, NgramSource)
        assert suffix is None or isinstance(suffix, SuffixSource)
        return cls(ngram, suffix, generator, setup.config.draft_length.verify_cost)

    # ---- choosing -------------------------------------------------------------------------------

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        return self.propose_batch([DraftJob(history, tuple(extra), k)])[0]

    def propose_batch(self, jobs: Sequence[DraftJob]) -> list[Draft]:
        out = [Draft() for _ in jobs]
        generated: list[tuple[int, DraftJob, Key]] = []
        for i, job in enumerate(jobs):
            if job.k <= 0:
                continue
            state = job.history.state.setdefault(self.name, AutoState())
            start = len(job.history.tokens) + len(job.extra)
            choice = self._choose(state, self._candidates(job), start)
            if choice is None:
                continue
            candidate, length = choice
            if candidate.tokens is None:
                generated.append((i, DraftJob(job.history, job.extra, length), candidate.key))
                continue
            out[i] = self._hand_out(job, candidate.key, candidate.tokens[:length])
        if generated and self.generator is not None:
            drafts = self.generator.propose_batch([job for _, job, _ in generated])
            for (i, job, key), draft in zip(generated, drafts, strict=True):
                out[i] = self._hand_out(job, key, tuple(draft[: job.k]))
        return out

    def _candidates(self, job: DraftJob) -> list[Candidate]:
        """What each source offers for this job, the lookups' drafts with their evidence."""
        found = []
        if self.ngram is not None:
            n, tokens = self.ngram.index(job.history).match(job.k, job.extra)
            if tokens:
                found.append(Candidate((self.ngram.name, n), tuple(tokens), len(tokens)))
        if self.suffix is not None:
            path = self.suffix.path(job.history, job.extra, job.k)
            if path.tokens:
                evidence = min(round(path.score), job.k)
                key = (self.suffix.name, evidence)
                found.append(Candidate(key, tuple(path.tokens), len(path.tokens)))
        if self.generator is not None:
            found.append(Candidate((self.generator.name, 0), None, job.k))
        return found

    def _choose(
        self, state: AutoState, candidates: list[Candidate], start: int
    ) -> tuple[Candidate, int] | None:
        """The candidate worth the most and its length; a one-token probe of the likeliest
        when none is worth drafting, every PROBE_EVERY positions; None otherwise."""
        best, best_worth, best_length_ = None, 1.0, 0
        for candidate in candidates:
            alpha = self.alpha(state, candidate.key)
            length = best_length(alpha, candidate.length, self.verify_cost)
            worth = expected_tokens(alpha, length) / (1 + self.verify_cost * length)
            if length and worth > best_worth:
                best, best_worth, best_length_ = candidate, worth, length
        if best is not None:
            return best, best_length_
        if candidates and start % PROBE_EVERY == 0:
            return max(candidates, key=lambda c: self.alpha(state, c.key)), 1
        return None

    def alpha(self, state: AutoState, key: Key) -> float:
        """Expected acceptance per draft token of `key`'s next draft for this request."""
        shared = self.shared.get(key)
        prior = shared.alpha if shared is not None else Acceptance().alpha
        own = state.records.get(key[0])
        if own is None:
            return prior
        return (own.accepted + PRIOR_WEIGHT * prior) / (own.accepted + own.rejected + PRIOR_WEIGHT)

    def _hand_out(self, job: DraftJob, key: Key, tokens: tuple[int, ...]) -> Draft:
        """The draft, remembered so that its verification can be scored."""
        if tokens:
            state: AutoState = job.history.state[self.name]
            start = len(job.history.tokens) + len(job.extra)
            state.proposed.setdefault(start, []).append(Proposed(job.extra, key, tokens))
        return Draft(tokens, key[0])

    # ---- learning -------------------------------------------------------------------------------

    def observe(self, history: History, new: Sequence[int], candidates: Candidates) -> None:
        """Score the drafts whose first position the committed tokens have passed."""
        state: AutoState | None = history.state.get(self.name)
        if state is None:
            return
        tokens = history.tokens
        for start in [p for p in state.proposed if p < len(tokens)]:
            entries = state.proposed.pop(start)
            happened = [e for e in entries if tokens[start - len(e.extra) : start] == list(e.extra)]
            if not happened:  # drafted for outcomes that did not happen
                continue
            verified = happened[-1]  # the latest: a just-in-time draft after a cache miss
            decided = tokens[start : start + len(verified.tokens)]
            accepted = common_prefix(verified.tokens, decided)
            # A run cut short by the end of what is committed tested no rejection yet.
            drafted = len(verified.tokens) if accepted < len(decided) else accepted
            self._learn(state, verified.key, accepted, drafted)

    def _learn(self, state: AutoState, key: Key, accepted: int, drafted: int) -> None:
        own = state.records.setdefault(key[0], Acceptance(0.0, 0.0))
        own.observe(accepted, drafted)
        shared = self.shared.setdefault(key, Acceptance(decay=SHARED_DECAY))
        shared.observe(accepted, drafted)
