"""What one system did with one request: the raw material every figure is computed from.

Kept free of vLLM and gRPC types so the arithmetic and the report can be tested on fixed records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationParams:
    """The sampling settings every system gets, identically."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = 0


@dataclass
class RequestRecord:
    """One request as measured by the benchmark (times in seconds, from the caller's side)."""

    system: str
    question_id: int | str
    category: str
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    wall_s: float = 0.0  # from submitting the request to its last token
    ttft_s: float = 0.0  # from submitting the request to its first token
    tpot_s: float | None = None  # mean gap between later tokens; None with fewer than 2
    forwards: int = 0  # target forward passes (engine steps) that produced tokens
    drafts: int | None = 0  # steps that verified a draft; None where the system cannot tell
    draft_tokens: int = 0
    accepted_tokens: int = 0
    cache_hits: int = 0  # tandem, pipelined: drafts served from the speculation cache
    cache_misses: int = 0  # ... and not pre-drafted
    skipped_waits: int = 0  # ... of which not waited for (the link's part did not pay)
    # tandem: (drafted, accepted) tokens by the source that drafted them (auto: those it chose)
    sources: dict[str, tuple[int, int]] = field(default_factory=dict)
    finish_reason: str | None = None

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class ConcurrencyRun:
    """One concurrency level of one system: `concurrency` requests in flight at a time."""

    system: str
    concurrency: int
    wall_s: float
    requests: list[RequestRecord]


async def concurrently(
    system: str,
    prompts: Sequence[_Prompt],
    concurrency: int,
    one: Callable[[_Prompt], Awaitable[RequestRecord]],
) -> ConcurrencyRun:
    """`concurrency` streams, each taking the next prompt when its last one ends; `one` runs a
    prompt as the system's client does and records it."""
    queue: asyncio.Queue[tuple[int, _Prompt]] = asyncio.Queue()
    for item in enumerate(prompts):
        queue.put_nowait(item)
    records: list[RequestRecord | None] = [None] * len(prompts)

    async def stream() -> None:
        while not queue.empty():
            index, prompt = queue.get_nowait()
            records[index] = await one(prompt)

    start = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return ConcurrencyRun(system, concurrency, wall, [r for r in records if r])


class _Prompt(Protocol):
    question_id: int | str
    category: str
    token_ids: Sequence[int]


class Trace:
    """Timestamps of one request as its tokens arrive, one engine step at a time.

    Both kinds of system feed it the same way, so TTFT and TPOT mean the same thing for all.
    """

    def __init__(self, prompt: _Prompt, start: float) -> None:
        self.prompt = prompt
        self.start = start
        self.first: float | None = None
        self.last = start
        self.token_ids: list[int] = []
        self.forwards = 0
        self.finish_reason: str | None = None

    def observe(self, token_ids: Sequence[int], now: float) -> None:
        """One engine step's new tokens (an empty step only moves the clock)."""
        if token_ids:
            if self.first is None:
                self.first = now
            self.forwards += 1
            self.token_ids.extend(token_ids)
        self.last = now

    def finish(self, reason: str | None, now: float) -> None:
        self.finish_reason = reason
        self.last = now

    def record(self, system: str) -> RequestRecord:
        first = self.first if self.first is not None else self.last
        n = len(self.token_ids)
        return RequestRecord(
            system=system,
            question_id=self.prompt.question_id,
            category=self.prompt.category,
            prompt_tokens=len(self.prompt.token_ids),
            token_ids=self.token_ids,
            wall_s=self.last - self.start,
            ttft_s=first - self.start,
            tpot_s=(self.last - first) / (n - 1) if n > 1 else None,
            forwards=self.forwards,
            finish_reason=self.finish_reason,
        )
