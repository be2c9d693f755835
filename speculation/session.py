"""The proposer's side of remote drafting: per-request sync state, acceptance accounting and
drafter health, independent of how messages travel (a Transport) and of vLLM (plain lists in).

Once per engine step `propose` receives the batch (request ids and their committed tokens) and
returns one draft per request. A drafter that errs or misses the step's
time budget is marked down: its requests get no drafts (decoding goes on without speculation)
until a probe shows it answers again, then speculation resumes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tandem.speculation.protocol import DraftItem, DraftReply, Mode


class Transport(Protocol):
    """How draft batches reach the drafter replicas."""

    replicas: int

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        """Send every replica its batch at once; a replica's entry is an exception on failure."""
        ...

    def free(self, replica: int, request_ids: list[str]) -> None:
        """Drop requests' state on a replica (fire and forget)."""
        ...

    def probe(self, replica: int) -> bool:
        """Non-blocking health probe: True once the replica answers again."""
        ...


@dataclass(frozen=True)
class RequestSpec:
    mode: Mode
    k: int  # speculative tokens per step, <= the engine's num_speculative_tokens
    greedy: bool = True  # False: the request samples (temperature > 0)


@dataclass
class SpeculationStats:
    """Drafts the target verified. Accepted tokens are counted where the output is (the target
    replica): vLLM may cut an accepted run short at max_tokens or a stop token."""

    draft_tokens: int = 0
    rounds: int = 0  # verification rounds that carried a draft

    def add(self, other: SpeculationStats) -> None:
        self.draft_tokens += other.draft_tokens
        self.rounds += other.rounds


@dataclass
class _Request:
    spec: RequestSpec
    replica: int
    synced: int = 0  # committed tokens the drafter is known to hold
    pending: int = 0  # draft length proposed last step; verified if the request is back
    stats: SpeculationStats = field(default_factory=SpeculationStats)


@dataclass
class SessionStats:
    speculation: SpeculationStats
    steps: int  # engine steps that called a drafter
    mean_rtt_s: float  # drafter round trip per such step
    p50_rtt_s: float
    failures: int  # steps where a drafter failed or missed the time budget
    drafters_down: int


class SpeculationSession:
    def __init__(
        self, transport: Transport, timeout_s: float, speculate_sampled: bool = False
    ) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        # False: no drafts while a sampling request is registered, because vLLM 0.32's CPU
        # rejection sampler is not exact (and can crash) for sampled requests beside drafts.
        self.speculate_sampled = speculate_sampled
        self._requests: dict[str, _Request] = {}
        self._down: set[int] = set()
        self._lock = threading.Lock()
        self._done = SpeculationStats()
        self._steps = 0
        self._rtt_total = 0.0
        self._rtts: deque[float] = deque(maxlen=1000)
        self._failures = 0

    def register(self, request_id: str, spec: RequestSpec) -> None:
        with self._lock:
            load = defaultdict(int)
            for request in self._requests.values():
                load[request.replica] += 1
            replica = min(range(self.transport.replicas), key=lambda r: load[r])
            self._requests[request_id] = _Request(spec, replica)

    def release(self, request_id: str) -> SpeculationStats:
        """Forget a finished or aborted request; returns its figures."""
        with self._lock:
            request = self._requests.pop(request_id, None)
            if request is None:
                return SpeculationStats()
            self._done.add(request.stats)
        if request.spec.mode is not Mode.OFF:
            self.transport.free(request.replica, [request_id])
        return request.stats

    def propose(
        self,
        request_ids: Sequence[str],
        num_tokens: Sequence[int],
        token_ids: Any,  # 2-D array-like: row i holds request i's committed tokens
    ) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in request_ids]
        batches: dict[int, list[DraftItem]] = defaultdict(list)
        slots: dict[int, list[tuple[int, _Request, int]]] = defaultdict(list)
        with self._lock:
            self._revive_drafters()
            requests = [self._requests.get(request_id) for request_id in request_ids]
            hold = not self.speculate_sampled and self._holds_sampled()
            for i, request in enumerate(requests):
                if request is None or request.spec.mode is Mode.OFF or request.spec.k == 0:
                    continue
                if request.pending:  # its last draft was verified in this step
                    request.stats.rounds += 1
                    request.stats.draft_tokens += request.pending
                    request.pending = 0
                if request.replica in self._down or hold:
                    continue
                n = int(num_tokens[i])
                new = tuple(int(t) for t in token_ids[i][request.synced : n])
                item = DraftItem(
                    request_ids[i], request.synced, new, request.spec.k, request.spec.mode
                )
                batches[request.replica].append(item)
                slots[request.replica].append((i, request, n))
        if not batches:
            return drafts
        start = time.perf_counter()
        results = self.transport.draft(dict(batches), self.timeout_s)
        rtt = time.perf_counter() - start
        with self._lock:
            self._steps += 1
            self._rtt_total += rtt
            self._rtts.append(rtt)
            for replica, result in results.items():
                if isinstance(result, Exception):
                    self._failures += 1
                    self._down.add(replica)
                    continue
                for (i, request, n), reply in zip(slots[replica], result, strict=True):
                    if not reply.known:
                        request.synced = 0
                        continue
                    request.synced = n
                    drafts[i] = list(reply.tokens[: request.spec.k])
                    request.pending = len(drafts[i])
        return drafts

    def _holds_sampled(self) -> bool:
        return any(not request.spec.greedy for request in self._requests.values())

    def must_flush_before(self, spec: RequestSpec) -> bool:
        """True when adding a request with this spec to the engine now would put it in a step
        beside unverified drafts it must not meet: the engine should step once first (this
        session, which has it registered, proposes no new drafts meanwhile)."""
        if spec.greedy or self.speculate_sampled:
            return False
        with self._lock:
            return any(request.pending for request in self._requests.values())

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
            )
