"""The proposer's side of remote drafting: once per engine step `propose` receives the batch
(request ids and their committed tokens) and returns one draft per request, independent of how
messages travel (a Transport, draft_transport.py) and of vLLM (plain lists in).

Each request's draft comes from the speculation cache when its outcome was pre-drafted
(speculation_cache.py), else just in time from its drafter replica, unless that replica is down
or late (drafter_health.py) or, for a pipelined request, the round trip costs more than its
drafts earn (policy.worth_waiting: a far drafter); what the drafter lacks of a request is
tracked per request (request_sync.py), and the session's figures are counted in
session_stats.py.

Feature modes (EAGLE-3): the proposer also hands over the target's features of the step's rows
for requests in such a mode; the session keeps those at committed positions until the next
message to the drafter carries them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tandem.speculation import feature_codec
from tandem.speculation.candidates import Candidates
from tandem.speculation.draft_transport import Transport
from tandem.speculation.drafter_health import DrafterHealth
from tandem.speculation.policy import draft_length, worth_waiting
from tandem.speculation.protocol import DraftItem, Hint, Mode
from tandem.speculation.registry import needs
from tandem.speculation.request_sync import RequestSpec, RequestSync
from tandem.speculation.session_stats import SessionStats, SpeculationStats
from tandem.speculation.speculation_cache import PreDrafting

if TYPE_CHECKING:
    from tandem.speculation.settings import SpeculationConfig


class SpeculationSession:
    """One target replica's drafting, shared by its proposer (`propose`, `hint`) and the replica
    (`register`, `release`, `stats`); thread-safe."""

    def __init__(self, transport: Transport, config: SpeculationConfig) -> None:
        self.transport = transport
        self.config = config
        self.timeout_s = config.step_timeout_ms / 1000
        self._predrafting = PreDrafting(transport, config)
        self._health = DrafterHealth(transport)
        self._requests: dict[str, RequestSync] = {}
        self._lock = threading.Lock()
        self._done = SpeculationStats()
        self._steps = 0
        self._rtt_total = 0.0
        self._rtts: deque[float] = deque(maxlen=1000)
        # Moving average of the just-in-time round trip's part on the wire (less the drafting).
        self._wire_s = 0.0
        self._speculating = 0  # registered requests in a mode other than `off`
        self._propose_s = 0.0
        self._feature_bytes = 0

    def register(self, request_id: str, spec: RequestSpec) -> None:
        with self._lock:
            load = defaultdict(int)
            for request in self._requests.values():
                load[request.replica] += 1
            replica = min(range(self.transport.replicas), key=lambda r: load[r])
            self._requests[request_id] = RequestSync(spec, replica)
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
            return [
                r is not None and r.features_wanted and needs(r.spec.mode).wants_features
                for r in requests
            ]

    def propose(
        self,
        request_ids: Sequence[str],
        num_tokens: Sequence[int],
        token_ids: Any,  # 2-D array-like: row i holds request i's committed tokens
        candidates: Sequence[Candidates] | None = None,  # the target's, per request
        # Feature modes: per request, (position of the first row, the step's rows) or None.
        features: Sequence[tuple[int, Any] | None] | None = None,
    ) -> list[list[int]]:
        if not self._speculating and self._predrafting.handle is None:
            self._predrafting.idle()  # no verification window to time either
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
        self._predrafting.step_started()
        drafts: list[list[int]] = [[] for _ in request_ids]
        sources = [""] * len(request_ids)  # who drafted each
        self._collect_predrafts()
        batches: dict[int, list[DraftItem]] = defaultdict(list)
        slots: dict[int, list[tuple[int, RequestSync, int]]] = defaultdict(list)
        speculating: list[tuple[int, RequestSync, int]] = []
        with self._lock:
            self._revive_drafters()
            skipped = self._health.skipped()
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
                if outcome and request.block:
                    request.acceptance.observe(outcome[0], len(request.block))
                    request.stats.verified(request.block_source, len(request.block), outcome[0])
                cached = request.cache.get(outcome) if outcome else None
                source = request.cache_sources.get(outcome, "") if outcome else ""
                request.block, request.cache, request.cache_sources = (), {}, {}
                request.proposed_at = 0  # set again below if it drafts this step
                request.draft_length = self._draft_length(request, len(request_ids))
                drafting = request.replica not in skipped and request.draft_length > 0
                request.features_wanted = drafting
                if not drafting:
                    request.features.clear()  # not sent this step: no use later
                    continue
                speculating.append((i, request, n))
                if self._pipelines(request) and outcome:
                    request.stats.cache_hits += cached is not None
                    request.stats.cache_misses += cached is None
                if cached is not None:
                    drafts[i], sources[i] = list(cached[: request.draft_length]), source
                    continue
                if self._pipelines(request) and not self._worth_waiting(request):
                    request.stats.skipped_waits += 1
                    continue  # no draft this step; pre-drafted below, from its new tokens
                batches[request.replica].append(
                    self._item(request_ids[i], request, token_ids[i], n)
                )
                slots[request.replica].append((i, request, n))
        if batches:
            self._draft_just_in_time(batches, slots, drafts, sources)
        with self._lock:
            for i, request, n in speculating:
                request.pending = len(drafts[i])
                request.block, request.proposed_at = tuple(drafts[i]), n
                request.block_source = sources[i]
        self._start_predrafts(request_ids, speculating, token_ids)
        self._predrafting.step_returned()
        return drafts

    def _draft_length(self, request: RequestSync, batch: int) -> int:
        """This step's draft length for the request (tandem.speculation.policy)."""
        policy = self.config.draft_length
        k = draft_length(policy, request.spec.num_speculative_tokens, batch)
        if policy.adaptive and k:
            return request.acceptance.length(k, policy.verify_cost)
        return k

    def _pipelines(self, request: RequestSync) -> bool:
        return request.spec.pipelined and self.config.pipeline.enabled

    def _worth_waiting(self, request: RequestSync) -> bool:
        """On a speculation-cache miss, whether a just-in-time round trip pays: what the wire
        adds to it (the round trip less the drafter's own time), in target verification steps,
        against what the request's drafts earn (policy.worth_waiting). A far drafter is not
        waited for where its drafts earn little; the step goes on without one and the drafter
        pre-drafts the next, as for a hit. Only the wire counts: waiting for the drafting
        itself pays on the same node (measured: counting it too skipped a third of the steps
        and cost mode auto 5%, docs/benchmarks/2026-12-07-link-hiding.md)."""
        if self.config.pipeline.wait_for_misses == "always":
            return True
        window = self._predrafting.window_s
        wait = self._wire_s / window if window else 0.0
        return worth_waiting(request.acceptance.alpha, request.draft_length, wait)

    def _item(self, request_id: str, request: RequestSync, tokens: Any, n: int) -> DraftItem:
        """What the drafter lacks of this request, and what to draft."""
        new = tuple(int(t) for t in tokens[request.synced : n])
        first, rows = request.take_features()
        rows, scales = feature_codec.encode(rows, self.config.feature_encoding)
        if rows is not None:
            self._feature_bytes += rows.nbytes + (0 if scales is None else scales.nbytes)
        item = DraftItem(
            request_id,
            request.synced,
            new,
            request.draft_length,
            request.spec.mode,
            request.candidates,
            features=rows,
            features_start=first,
            feature_scales=scales,
        )
        request.candidates = ()  # delivered once
        return item

    def _draft_just_in_time(
        self,
        batches: dict[int, list[DraftItem]],
        slots: dict[int, list[tuple[int, RequestSync, int]]],
        drafts: list[list[int]],
        sources: list[str],
    ) -> None:
        start = time.perf_counter()
        results = self.transport.draft(dict(batches), self.timeout_s)
        rtt = time.perf_counter() - start
        with self._lock:
            self._steps += 1
            self._rtt_total += rtt
            self._rtts.append(rtt)
            for replica, result in results.items():
                if self._health.failed(replica, result):
                    continue
                wire = rtt - max((reply.drafting_s for reply in result), default=0.0)
                self._wire_s = 0.8 * self._wire_s + 0.2 * wire if self._wire_s else wire
                for (i, request, n), reply in zip(slots[replica], result, strict=True):
                    if not reply.known:
                        request.synced = 0
                        continue
                    request.synced = n
                    drafts[i] = list(reply.tokens[: request.draft_length])
                    sources[i] = reply.source

    def _start_predrafts(
        self,
        request_ids: Sequence[str],
        speculating: list[tuple[int, RequestSync, int]],
        token_ids: Any,
    ) -> None:
        """Have the drafters pre-draft the next blocks while the target verifies these."""
        batches: dict[int, list[DraftItem]] = defaultdict(list)
        with self._lock:
            skipped = self._health.skipped()
            for i, request, n in speculating:
                if not self._pipelines(request) or request.replica in skipped:
                    continue  # an empty block, too, is pre-drafted: the token after it
                item = self._item(request_ids[i], request, token_ids[i], n)
                item = dataclasses.replace(item, block=request.block)
                batches[request.replica].append(item)
                request.synced = n  # the pre-drafting call brings the drafter up to date
        if batches:
            self._predrafting.start(dict(batches), wire_s=self._wire_s)

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
                    and request.replica not in self._health.down
                ):
                    batches[request.replica][request_id] = hint
        for replica, batch in batches.items():
            self.transport.hint(replica, batch)

    def _collect_predrafts(self) -> None:
        """Fill each request's speculation cache from the pre-drafting started last step."""
        results = self._predrafting.collect()
        with self._lock:
            for replica, result in results.items():
                if self._health.failed(replica, result):
                    continue
                for reply in result:
                    request = self._requests.get(reply.request_id)
                    if request is None:
                        continue
                    if not reply.known:
                        request.synced = 0
                    request.cache, request.cache_sources = reply.blocks, reply.sources

    def _revive_drafters(self) -> None:
        """Call with the lock held."""
        for replica in self._health.revive():
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
                failures=self._health.failures,
                drafters_down=len(self._health.down),
                propose_s=self._propose_s,
                predraft_wait_s=self._predrafting.wait_s,
                timeouts=self._health.timeouts,
                feature_bytes=self._feature_bytes,
            )
