"""The proposer's side of remote drafting: per-request sync state, acceptance accounting and
drafter health, independent of how messages travel (a Transport) and of vLLM (plain lists in).

Once per engine step `propose` receives the batch (request ids and their committed tokens) and
returns one draft per request. A drafter that errs is marked down: its requests get no drafts
(decoding goes on without speculation) until a probe shows it answers again, then speculation
resumes. A drafter that misses the step's time budget is late, not broken (a loaded machine):
the transport keeps it `busy` until the late call returns, and it drafts again right after.

Pipelining (PEARL, SSD): after handing the target a block, the session asks the drafters to
pre-draft the next block for the block's likeliest verification outcomes while the target
verifies it. At the next step the actual outcome (accepted length, emitted token) is looked up in
that speculation cache: a hit costs no round trip, a miss is drafted just in time.

Feature modes (EAGLE-3): the proposer also hands over the target's features of the step's rows
for requests in such a mode; the session keeps those at committed positions until the next
message to the drafter carries them (once, like tokens: a drafter that lost a request starts
again from the features sent after that).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tandem.speculation.candidates import Candidates
from tandem.speculation.policy import Acceptance, draft_length
from tandem.speculation.protocol import (
    DraftItem,
    DraftReply,
    Hint,
    Mode,
    Outcome,
    PredraftPlan,
    PredraftReply,
)

if TYPE_CHECKING:
    from tandem.speculation.settings import SpeculationConfig


class Transport(Protocol):
    """How draft batches reach the drafter replicas."""

    replicas: int

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        """Send every replica its batch at once; a replica's entry is an exception on failure,
        a TimeoutError when it missed timeout_s."""
        ...

    def free(self, replica: int, request_ids: list[str]) -> None:
        """Drop requests' state on a replica (fire and forget)."""
        ...

    def probe(self, replica: int) -> bool:
        """Non-blocking health probe: True once the replica answers again."""
        ...

    def busy(self, replica: int) -> bool:
        """True while a call to the replica that missed its time budget still runs."""
        ...

    def predraft(self, batches: dict[int, list[DraftItem]], plan: PredraftPlan) -> Any:
        """Start pre-drafting (asynchronously); returns a handle for `collect`."""
        ...

    def collect(self, handle: Any, timeout_s: float) -> dict[int, list[PredraftReply] | Exception]:
        """The pre-drafted blocks of a `predraft` call, waiting at most timeout_s."""
        ...

    def hint(self, replica: int, hints: dict[str, Hint]) -> None:
        """Deliver Mirror-SD hints (fire and forget: the target's forward pass goes on)."""
        ...


@dataclass(frozen=True)
class RequestSpec:
    mode: str  # a Mode, or a registered source's name
    num_speculative_tokens: int  # the request's k, <= speculation.num_speculative_tokens
    pipelined: bool = True  # pre-draft while the target verifies (speculation cache)


@dataclass
class SpeculationStats:
    """Drafts the target verified. Accepted tokens are counted where the output is (the target
    replica): vLLM may cut an accepted run short at max_tokens or a stop token."""

    draft_tokens: int = 0
    drafts: int = 0  # verification rounds that carried a draft
    cache_hits: int = 0  # steps whose draft came from the speculation cache
    cache_misses: int = 0  # pipelined steps that had to draft just in time

    def add(self, other: SpeculationStats) -> None:
        self.draft_tokens += other.draft_tokens
        self.drafts += other.drafts
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses


@dataclass
class _Request:
    spec: RequestSpec
    replica: int
    synced: int = 0  # committed tokens the drafter is known to hold
    pending: int = 0  # draft length proposed last step; verified if the request is back
    block: tuple[int, ...] = ()  # that draft, for the speculation cache
    proposed_at: int = 0  # committed tokens when it was proposed
    cache: dict[Outcome, tuple[int, ...]] = field(default_factory=dict)
    candidates: Candidates = ()  # the target's, from the last verification, not yet sent
    draft_length: int = 0  # this step's (the policy's, at most num_speculative_tokens)
    acceptance: Acceptance = field(default_factory=Acceptance)  # for an adaptive draft length
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    # Feature modes: the target's features not sent yet, (first position, rows) in order, and
    # the position after the last one recorded.
    features: list[tuple[int, Any]] = field(default_factory=list)
    features_end: int = 0

    def record_features(self, first: int, rows: Any, committed: int) -> None:
        """Keep a step's feature rows at committed positions the drafter lacks: not the last
        committed token's (the target has not read it yet), nor rejected drafts' after it."""
        start, end = max(first, self.features_end), min(first + len(rows), committed - 1)
        if start < end:
            self.features.append((start, rows[start - first : end - first]))
            self.features_end = end

    def take_features(self) -> tuple[int, Any]:
        """The unsent features (contiguous from their first position), once."""
        if not self.features:
            return 0, None
        first, blocks = self.features[0][0], []
        for start, rows in self.features:
            if start != first + sum(len(b) for b in blocks):
                break  # a gap (a step without its rows): the drafter restarts after it
            blocks.append(rows)
        self.features = self.features[len(blocks) :]
        return first, np.concatenate(blocks)

    def outcome(self, committed: int, last_token: int) -> Outcome | None:
        """How the target verified `block`: accepted drafts and the token it emitted after."""
        accepted = committed - self.proposed_at - 1
        if not self.block or not 0 <= accepted <= len(self.block):
            return None
        return accepted, last_token


@dataclass
class SessionStats:
    speculation: SpeculationStats
    steps: int  # engine steps that called a drafter
    mean_rtt_s: float  # drafter round trip per such step
    p50_rtt_s: float
    failures: int  # drafter calls that failed (an error, a dead drafter)
    drafters_down: int
    propose_s: float = 0.0  # time in `propose`, the round trips and waits included
    predraft_wait_s: float = 0.0  # of which waiting for pre-drafted blocks
    timeouts: int = 0  # drafter calls that missed the time budget (not faults)
    feature_bytes: int = 0  # target features sent to drafters (feature modes)


class SpeculationSession:
    def __init__(self, transport: Transport, config: SpeculationConfig) -> None:
        self.transport = transport
        self.config = config
        self.timeout_s = config.step_timeout_ms / 1000
        self._predrafting: Any = None  # the handle of the pre-drafting started last step
        self._returned = 0.0  # when propose last handed the target its drafts
        # Moving average of the time from handing the target its drafts to the next step:
        # the target's verification, the window pre-drafting must fit in.
        self._window_s = 0.0
        self._requests: dict[str, _Request] = {}
        self._down: set[int] = set()
        self._lock = threading.Lock()
        self._done = SpeculationStats()
        self._steps = 0
        self._rtt_total = 0.0
        self._rtts: deque[float] = deque(maxlen=1000)
        self._failures = 0
        self._speculating = 0  # registered requests in a mode other than `off`
        self._propose_s = 0.0
        self._predraft_wait_s = 0.0
        self._timeouts = 0
        self._feature_bytes = 0

    def register(self, request_id: str, spec: RequestSpec) -> None:
        with self._lock:
            load = defaultdict(int)
            for request in self._requests.values():
                load[request.replica] += 1
            replica = min(range(self.transport.replicas), key=lambda r: load[r])
            self._requests[request_id] = _Request(spec, replica)
            self._speculating += spec.mode != Mode.OFF

    def release(self, request_id: str) -> SpeculationStats:
        """Forget a finished or aborted request; returns its figures."""
        with self._lock:
            request = self._requests.pop(request_id, None)
            if request is None:
                return SpeculationStats()
            self._done.add(request.stats)
            self._speculating -= request.spec.mode != Mode.OFF
        if request.spec.mode != Mode.OFF:
            self.transport.free(request.replica, [request_id])
        return request.stats

    def speculating(self) -> bool:
        """Whether any registered request is in a mode that drafts."""
        return self._speculating > 0

    def wants_features(self, request_ids: Sequence[str]) -> list[bool]:
        """Which requests' feature rows the proposer should hand over (feature modes)."""
        with self._lock:
            requests = [self._requests.get(request_id) for request_id in request_ids]
            return [r is not None and r.spec.mode == Mode.EAGLE for r in requests]

    def propose(
        self,
        request_ids: Sequence[str],
        num_tokens: Sequence[int],
        token_ids: Any,  # 2-D array-like: row i holds request i's committed tokens
        candidates: Sequence[Candidates] | None = None,  # the target's, per request
        # Feature modes: per request, (position of the first row, the step's rows) or None.
        features: Sequence[tuple[int, Any] | None] | None = None,
    ) -> list[list[int]]:
        if not self._speculating and self._predrafting is None:
            self._returned = 0.0  # no verification window to time either
            return [[] for _ in request_ids]  # every request is `off`: nothing to do
        start = time.perf_counter()
        try:
            return self._propose(request_ids, num_tokens, token_ids, candidates, features)
        finally:
            self._propose_s += time.perf_counter() - start

    def _propose(
        self,
        request_ids: Sequence[str],
        num_tokens: Sequence[int],
        token_ids: Any,
        candidates: Sequence[Candidates] | None,
        features: Sequence[tuple[int, Any] | None] | None,
    ) -> list[list[int]]:
        self._time_window()
        drafts: list[list[int]] = [[] for _ in request_ids]
        self._collect_predrafts()
        batches: dict[int, list[DraftItem]] = defaultdict(list)
        slots: dict[int, list[tuple[int, _Request, int]]] = defaultdict(list)
        speculating: list[tuple[int, _Request, int]] = []
        with self._lock:
            self._revive_drafters()
            skipped = self._down | self._busy()
            requests = [self._requests.get(request_id) for request_id in request_ids]
            for i, request in enumerate(requests):
                if request is None or request.spec.mode == Mode.OFF:
                    continue
                if request.pending:  # its last draft was verified in this step
                    request.stats.drafts += 1
                    request.stats.draft_tokens += request.pending
                    request.pending = 0
                n = int(num_tokens[i])
                if features and features[i] is not None:
                    request.record_features(*features[i], n)
                request.candidates = candidates[i] if candidates else ()
                outcome = request.outcome(n, int(token_ids[i][n - 1]))
                if outcome:
                    request.acceptance.observe(outcome[0], len(request.block))
                cached = request.cache.get(outcome) if outcome else None
                request.block, request.cache = (), {}
                request.draft_length = self._draft_length(request, len(request_ids))
                if request.replica in skipped or not request.draft_length:
                    continue
                speculating.append((i, request, n))
                if self._pipelines(request) and outcome:
                    request.stats.cache_hits += cached is not None
                    request.stats.cache_misses += cached is None
                if cached is not None:
                    drafts[i] = list(cached[: request.draft_length])
                    continue
                batches[request.replica].append(
                    self._item(request_ids[i], request, token_ids[i], n)
                )
                slots[request.replica].append((i, request, n))
        if batches:
            self._draft_just_in_time(batches, slots, drafts)
        with self._lock:
            for i, request, n in speculating:
                request.pending = len(drafts[i])
                request.block, request.proposed_at = tuple(drafts[i]), n
        self._start_predrafts(request_ids, speculating, token_ids)
        self._returned = time.perf_counter()
        return drafts

    def _draft_length(self, request: _Request, batch: int) -> int:
        """This step's draft length for the request (tandem.speculation.policy)."""
        policy = self.config.draft_length
        k = draft_length(policy, request.spec.num_speculative_tokens, batch)
        if policy.adaptive and k:
            return request.acceptance.length(k, policy.verify_cost)
        return k

    def _pipelines(self, request: _Request) -> bool:
        return request.spec.pipelined and self.config.pipeline.enabled

    def _item(self, request_id: str, request: _Request, tokens: Any, n: int) -> DraftItem:
        """What the drafter lacks of this request, and what to draft."""
        new = tuple(int(t) for t in tokens[request.synced : n])
        first, rows = request.take_features()
        if rows is not None:
            self._feature_bytes += rows.nbytes
        item = DraftItem(
            request_id,
            request.synced,
            new,
            request.draft_length,
            request.spec.mode,
            request.candidates,
            features=rows,
            features_start=first,
        )
        request.candidates = ()  # delivered once
        return item

    def _draft_just_in_time(
        self,
        batches: dict[int, list[DraftItem]],
        slots: dict[int, list[tuple[int, _Request, int]]],
        drafts: list[list[int]],
    ) -> None:
        start = time.perf_counter()
        results = self.transport.draft(dict(batches), self.timeout_s)
        rtt = time.perf_counter() - start
        with self._lock:
            self._steps += 1
            self._rtt_total += rtt
            self._rtts.append(rtt)
            for replica, result in results.items():
                if self._failed(replica, result):
                    continue
                for (i, request, n), reply in zip(slots[replica], result, strict=True):
                    if not reply.known:
                        request.synced = 0
                        continue
                    request.synced = n
                    drafts[i] = list(reply.tokens[: request.draft_length])

    def _start_predrafts(
        self,
        request_ids: Sequence[str],
        speculating: list[tuple[int, _Request, int]],
        token_ids: Any,
    ) -> None:
        """Have the drafters pre-draft the next blocks while the target verifies these."""
        batches: dict[int, list[DraftItem]] = defaultdict(list)
        with self._lock:
            skipped = self._down | self._busy()
            for i, request, n in speculating:
                if not request.block or not self._pipelines(request) or request.replica in skipped:
                    continue
                item = self._item(request_ids[i], request, token_ids[i], n)
                item = dataclasses.replace(item, block=request.block)
                batches[request.replica].append(item)
                request.synced = n  # the pre-drafting call brings the drafter up to date
        if batches:
            pipeline = self.config.pipeline
            plan = PredraftPlan(
                pipeline.outcomes, pipeline.fanout, 0.9 * self._window_s, self.config.mirror.enabled
            )
            self._predrafting = self.transport.predraft(dict(batches), plan)

    def hint(self, hints: dict[str, Hint]) -> None:
        """Mirror-SD: pass the target's early-exit candidates for the blocks it is verifying to
        the drafters pre-drafting them. Called from inside the target's forward pass."""
        batches: dict[int, dict[str, Hint]] = defaultdict(dict)
        with self._lock:
            for request_id, hint in hints.items():
                request = self._requests.get(request_id)
                if (
                    request is not None
                    and self._pipelines(request)
                    and request.replica not in self._down
                ):
                    batches[request.replica][request_id] = hint
        for replica, batch in batches.items():
            self.transport.hint(replica, batch)

    def _collect_predrafts(self) -> None:
        """Fill each request's speculation cache from the pre-drafting started last step."""
        handle, self._predrafting = self._predrafting, None
        if handle is None:
            return
        start = time.perf_counter()
        results = self.transport.collect(handle, self.timeout_s)
        self._predraft_wait_s += time.perf_counter() - start
        with self._lock:
            for replica, result in results.items():
                if self._failed(replica, result):
                    continue
                for reply in result:
                    request = self._requests.get(reply.request_id)
                    if request is None:
                        continue
                    if not reply.known:
                        request.synced = 0
                    request.cache = reply.blocks

    def _failed(self, replica: int, result: Any) -> bool:
        """A failed or late drafter call. A late one is counted (the transport keeps the replica
        busy until it returns); a failed one also marks the replica down until a probe answers.
        Call with the lock held."""
        if not isinstance(result, Exception):
            return False
        if isinstance(result, TimeoutError):
            self._timeouts += 1
        else:
            self._failures += 1
            self._down.add(replica)
        return True

    def _busy(self) -> set[int]:
        return {r for r in range(self.transport.replicas) if self.transport.busy(r)}

    def _time_window(self) -> None:
        """Time the target's verification: from the last propose's return to this call.

        Not the whole step: a pre-draft budget taken from the step, which includes waiting for
        the pre-draft itself, would grow with every pre-draft that overran.
        """
        window = time.perf_counter() - self._returned
        if self._returned and window < 1.0:  # not across idle time
            self._window_s = 0.8 * self._window_s + 0.2 * window if self._window_s else window
        self._returned = 0.0

    def _revive_drafters(self) -> None:
        for replica in list(self._down):
            if self.transport.probe(replica):
                self._down.discard(replica)
                for request in self._requests.values():
                    if request.replica == replica:
                        request.synced = 0  # it may have restarted empty: resend everything

    def stats(self) -> SessionStats:
        with self._lock:
            total = SpeculationStats()
            total.add(self._done)
            for request in self._requests.values():
                total.add(request.stats)
            rtts = sorted(self._rtts)
            return SessionStats(
                speculation=total,
                steps=self._steps,
                mean_rtt_s=self._rtt_total / self._steps if self._steps else 0.0,
                p50_rtt_s=rtts[len(rtts) // 2] if rtts else 0.0,
                failures=self._failures,
                drafters_down=len(self._down),
                propose_s=self._propose_s,
                predraft_wait_s=self._predraft_wait_s,
                timeouts=self._timeouts,
                feature_bytes=self._feature_bytes,
            )
