"""Shared pieces of the reliability tests: prompts, tandem's processes, streams in lanes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import psutil

from tandem.client import AsyncTandemClient, TandemClient
from tandem.protos import tandem_pb2 as pb

DEADLINE_S = 300  # every call's deadline: generous, for a loaded 2-core machine
MODES = ("ngram", "suffix", "recycle", "model", "hybrid")
# Prompts of our own (never Spec-Bench's), some repetitive so that drafts get accepted.
PROMPTS = [
    "Repeat exactly, four times: the quick brown fox jumps over the lazy dog.",
    "Write a Python function that returns the squares of the numbers 1 to 10.",
    "List the months of the year, one per line.",
    "Explain in three sentences why the sky is blue.",
    "Count from one to thirty in words, separated by commas.",
    "Translate to French: good morning, good evening, good night.",
    "Give a recipe for pancakes with a list of ingredients.",
    "Summarize the plot of a story about a robot who learns to paint.",
]


def target_references(client: TandemClient, max_tokens: int) -> list[list[int]]:
    """Each of PROMPTS' greedy output from the target alone, `max_tokens` long (EOS ignored):
    what a lane's greedy requests must return (check_greedy)."""
    return [
        list(
            client.generate(
                p, temperature=0, max_tokens=max_tokens, ignore_eos=True, speculation="off"
            ).token_ids
        )
        for p in PROMPTS
    ]


def tandem_processes(service) -> dict[str, list[psutil.Process]]:
    """The service's own processes by role: the server (gRPC front door and coordinator), the
    target replicas and the drafter replicas (Ray workers under the embedded cluster), and the
    engines' workers (the target's forward, in a process vLLM starts under the replica)."""
    root = psutil.Process(service.proc.pid)
    roles: dict[str, list[psutil.Process]] = {
        "server": [root],
        "target": [],
        "drafter": [],
        "engine": [],
    }
    for process in root.children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "TargetReplica" in command:
            roles["target"].append(process)
        elif "DrafterReplica" in command:
            roles["drafter"].append(process)
        elif "VLLM::Worker" in command:
            roles["engine"].append(process)
    return roles


def drafter_pid(service) -> int | None:
    """The pid of the (one) drafter replica; None while Ray restarts it."""
    alive = [p.pid for p in tandem_processes(service)["drafter"] if p.status() != "zombie"]
    return alive[0] if len(alive) == 1 else None


def wait_until_idle(client: TandemClient, timeout_s: float = 60) -> pb.Stats:
    """Stats once neither the coordinator nor any engine holds a request (or at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = client.stats()
        idle = stats.requests_in_flight == 0 and all(
            r.engine_unfinished == 0 and r.outstanding == 0 for r in stats.replicas
        )
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def wait_for(condition, timeout_s: float, interval_s: float = 0.5) -> bool:
    """Poll `condition()` until it holds or timeout_s passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def wait_drafting(client: TandemClient, timeout_s: float) -> bool:
    """Whether, while streams run, a drafter answers the target and drafts flow. A drafter
    restarted by Ray may be loading, or the target may not have seen the restart yet (its
    calls to the dead one time out, `drafters_down` still 0): replies received and drafts
    counted both growing mean the target drafts with a drafter that is up."""
    before = client.stats()

    def drafting() -> bool:
        now = client.stats()
        return (
            now.drafters_down == 0
            and now.breakdown.drafter_bytes_received > before.breakdown.drafter_bytes_received
            and now.speculation.draft_tokens > before.speculation.draft_tokens
        )

    return wait_for(drafting, timeout_s)


@dataclass
class Lane:
    """One of several concurrent streams that request after request until told to stop."""

    index: int
    mode: str = "ngram"
    sampled: bool = False
    max_tokens: int = 32
    done: list[tuple[int, list[int], pb.SpeculationStats]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    streamed: int = 0  # tokens received, finished requests or not
    in_flight: int = 0  # tokens received of the request streaming now
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def sampling(self) -> dict:
        if self.sampled:
            return {"temperature": 0.8, "top_k": 40, "top_p": 0.95}
        return {"temperature": 0}

    async def run(self, client: AsyncTandemClient, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            prompt = (self.index + n) % len(PROMPTS)
            n += 1
            ids: list[int] = []
            try:
                async for chunk in client.stream(
                    PROMPTS[prompt],
                    max_tokens=self.max_tokens,
                    ignore_eos=True,
                    speculation=self.mode,
                    **self.sampling(),
                ):
                    ids += chunk.token_ids
                    self.streamed += len(chunk.token_ids)
                    self.in_flight = len(ids)
                    if ids:
                        self.started.set()
            except grpc.aio.AioRpcError as exc:
                self.errors.append(exc)
                continue
            finally:
                self.in_flight = 0
            self.done.append((prompt, ids, chunk.speculation))


async def run_lanes(address: str, lanes: list[Lane], until) -> None:
    """Run the lanes until the coroutine `until(lanes)` returns, then let them finish."""
    stop = asyncio.Event()
    async with AsyncTandemClient(address, timeout=DEADLINE_S) as client:
        tasks = [asyncio.create_task(lane.run(client, stop)) for lane in lanes]
        try:
            await until(lanes)
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def check_greedy(lanes: list[Lane], references: list[list[int]]) -> None:
    """Every finished greedy request equals its prompt's target-only output; sampled ones have
    their full length. No request failed."""
    for lane in lanes:
        assert not lane.errors, (lane.index, lane.errors[:3])
        for prompt, ids, _ in lane.done:
            assert len(ids) == lane.max_tokens, (lane.index, prompt)
            if not lane.sampled:
                assert ids == references[prompt][: lane.max_tokens], (lane.index, lane.mode, prompt)
