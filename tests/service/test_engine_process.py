"""A target unlike the default one: its forward compiled (no `enforce_eager`) and in a worker
process of its own (`target.engine_args.distributed_executor_backend: mp`, vLLM's multiprocess
executor), with the adaptive draft length (speculation.draft_length.adaptive), its drafter behind
an emulated 10 ms link (speculation.drafters.link: a relay on the drafter's socket, as `tandem bench
--drafter-link-ms` sets one).

The speculation session is built in the engine's process from plain values, the target actor
reaches it between steps, and the drafters are found again through the actor's directory when
one restarts. Mode eagle starts and reads its features from the compiled forward's outputs.
Greedy and seeded output stays the target's, every request drafting a length of its own; the
figures come back, the link down for 10 s and a killed drafter fail no request. (How the
length is chosen is tested in test_policy and test_session.) A service of its own: no other
module runs this layout, and the last test kills its drafter."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from tandem.client import AsyncTandemClient, TandemClient
from tandem.cluster.config.pools import TargetPoolConfig
from tests.support.prompts import spec_bench_prompts
from tests.support.reliability import (
    DEADLINE_S,
    PROMPTS,
    Lane,
    check_greedy,
    drafter_pid,
    run_lanes,
    tandem_processes,
    target_references,
    wait_drafting,
)
from tests.support.services import start_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_TOKENS = 48
LINK_RTT_MS = 10.0


@pytest.fixture(scope="module")
def service():
    engine_args = {"dtype": "float32", "max_model_len": 2048, "distributed_executor_backend": "mp"}
    # The default environment, plus: TorchDynamo traces the forward with its eager backend, as
    # vLLM's own CPU CI has it, instead of a minute of inductor (tests/service/test_taps.py
    # checks the features both ways).
    env = {**TargetPoolConfig().env, "VLLM_CPU_CI_ENV": "1"}
    yield from start_service(
        {
            "target": {"engine_args": engine_args, "env": env},
            "speculation": {
                "draft_length": {"adaptive": True},
                "drafters": {"link": {"rtt_ms": LINK_RTT_MS}},
            },
        }
    )


@pytest.fixture(scope="module")
def reference(service):
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        return [
            list(
                client.generate(
                    p, temperature=0, max_tokens=MAX_TOKENS, speculation="off"
                ).token_ids
            )
            for p in PROMPTS[:4]
        ]


def test_the_forward_runs_in_a_process_of_its_own(service):
    processes = tandem_processes(service)
    (target,) = processes["target"]
    engines = processes["engine"]
    assert [e.ppid() for e in engines] == [target.pid]


CATEGORIES = ("writing", "extraction", "translation")


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 3}])
def test_output_is_the_targets_while_the_length_adapts(service, sampling):
    drafted = rejected = 0
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        for prompt in [spec_bench_prompts(1, (c,))[0] for c in CATEGORIES]:
            kwargs = {**sampling, "max_tokens": MAX_TOKENS}
            expected = list(client.generate(prompt, speculation="off", **kwargs).token_ids)
            result = client.generate(prompt, speculation="ngram", **kwargs)
            assert list(result.token_ids) == expected, (prompt, sampling)
            drafted += result.speculation.draft_tokens
            rejected += result.speculation.draft_tokens - result.speculation.accepted_tokens
    assert drafted > 0 and rejected > 0


def test_mode_eagle_reads_features_from_the_compiled_forward(service, reference):
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        for prompt, expected in zip(PROMPTS[:2], reference, strict=False):
            result = client.generate(
                prompt, temperature=0, max_tokens=MAX_TOKENS, speculation="eagle"
            )
            assert list(result.token_ids) == expected
            assert result.speculation.draft_tokens > 0
            assert result.speculation.sources["eagle"].draft_tokens > 0


def test_greedy_output_and_figures_cross_the_process(service, reference):
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        before = client.stats()
        drafted = 0
        for prompt, expected in zip(PROMPTS[:4], reference, strict=True):
            result = client.generate(prompt, temperature=0, max_tokens=MAX_TOKENS)
            assert list(result.token_ids) == expected
            drafted += result.speculation.draft_tokens
        after = client.stats()
    assert drafted > 0  # per-request figures, released in the engine's process
    assert after.breakdown.drafter_round_trips > before.breakdown.drafter_round_trips
    assert after.breakdown.forward_s > before.breakdown.forward_s  # timed across the process


def test_drafts_cross_the_emulated_link(service, reference):
    """Every drafter message crosses the relay: no round trip is shorter than the link's."""
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        result = client.generate(
            PROMPTS[0], temperature=0, max_tokens=MAX_TOKENS, speculation="ngram"
        )
        stats = client.stats()
    assert list(result.token_ids) == reference[0] and result.speculation.draft_tokens > 0
    assert stats.breakdown.drafter_round_trips > 0
    assert stats.drafter_rtt_p50_s >= LINK_RTT_MS / 1000


def test_the_link_down_for_10_s_fails_no_request_and_drafting_resumes(service):
    """Issue 27, item 5: the relay, a process of its own, stopped for 10 s under two streams
    (where the draft-length policy drafts): the drafter's late calls are timeouts, not faults,
    requests go on without drafts, and once the link is back it drafts again, the same drafter
    on the same connection."""
    (relay,) = [
        p
        for p in psutil.Process(drafter_pid(service)).children()
        if "tandem.cluster.transport.link" in " ".join(p.cmdline())
    ]
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        lanes = [Lane(i) for i in range(2)]
        references = target_references(client, lanes[0].max_tokens)

        async def until(lanes):
            await asyncio.gather(*(lane.started.wait() for lane in lanes))
            assert await asyncio.to_thread(wait_drafting, client, 120), "not drafting"
            before = client.stats()
            relay.suspend()  # the link goes down
            try:
                done = sum(len(lane.done) for lane in lanes)
                await asyncio.sleep(10)
                stats = client.stats()
                assert sum(len(lane.done) for lane in lanes) > done, "stalled while it was down"
                assert stats.drafter_timeouts > before.drafter_timeouts
                assert stats.drafter_failures == before.drafter_failures
            finally:
                relay.resume()
            assert await asyncio.to_thread(wait_drafting, client, 120), "no drafts after it"

        asyncio.run(run_lanes(service.address, lanes, until))
    check_greedy(lanes, references)


def test_a_killed_drafter_is_found_again_through_the_directory(service, reference):
    pid = drafter_pid(service)
    assert pid is not None

    async def four_streams_and_a_crash():
        async with AsyncTandemClient(service.address, timeout=DEADLINE_S) as client:
            started = asyncio.Event()
            seen = set()

            async def one(i, prompt):
                ids = []
                async for chunk in client.stream(prompt, temperature=0, max_tokens=MAX_TOKENS):
                    if chunk.token_ids:
                        seen.add(i)
                        if len(seen) == len(reference):
                            started.set()
                    ids += chunk.token_ids
                return ids

            tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(PROMPTS[:4])]
            await started.wait()
            os.kill(pid, signal.SIGKILL)  # a real crash, mid-stream
            return await asyncio.gather(*tasks)

    assert asyncio.run(four_streams_and_a_crash()) == reference
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        deadline = time.monotonic() + 180
        while True:  # Ray restarts the drafter on a new socket; the directory says where
            result = client.generate(PROMPTS[0], temperature=0, max_tokens=MAX_TOKENS)
            if result.speculation.draft_tokens > 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert result.speculation.draft_tokens > 0
    assert list(result.token_ids) == reference[0]
