"""Mode `eagle` end to end: the target's features travel with its committed tokens to a remote
EAGLE-3 head (the one tandem ships), pre-drafting on; greedy output equals the target alone's
(the same engine without speculation) at batch 1 and with 8 concurrent streams while drafts
flow; with online learning on (SPECULATING's drafters.online), greedy and seeded outputs stay
the target alone's while head versions are trained, judged and swapped; a killed drafter fails
no request and drafting resumes; a head that does not fit the target is refused at start.

On the shared SPECULATING service (drafts at every batch size), last among its users: it kills
the drafter."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from tandem.benchmarks.launcher import ServiceProcess
from tandem.client import AsyncTandemClient, TandemClient
from tandem.models import builtin_head
from tests.support.prompts import spec_bench_prompts
from tests.support.reliability import drafter_pid
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.uses_service(SPECULATING, order="last")]

CATEGORIES = ("writing", "coding", "qa", "summarization", "translation", "rag", "math_reasoning")
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def service(services):
    return services.get(SPECULATING)


@pytest.fixture(scope="module")
def prompts():
    return spec_bench_prompts(8, CATEGORIES)


@pytest.fixture(scope="module")
def reference(service, prompts):
    """Greedy continuations of the target alone: the same engine, speculation off. (Hugging Face
    transformers is not the reference: its fp32 kernels and vLLM's CPU kernels can break a
    near-tie differently, e.g. the first token of the first prompt here.)"""
    with TandemClient(service.address) as client:
        return [
            list(
                client.generate(
                    prompt, temperature=0, max_tokens=MAX_TOKENS, speculation="off"
                ).token_ids
            )
            for prompt in prompts
        ]


def ours(tokens, reference):
    """Our output against the reference: the same tokens, up to where ours stopped (EOS)."""
    return tokens == reference[: len(tokens)] and len(tokens) > 0


@pytest.mark.timeout(900)
def test_greedy_batch_1_equals_the_reference(service, prompts, reference):
    drafted = accepted = 0
    with TandemClient(service.address) as client:
        for prompt, expected in list(zip(prompts, reference, strict=True))[:3]:
            result = client.generate(
                prompt, temperature=0, max_tokens=MAX_TOKENS, speculation="eagle"
            )
            assert ours(list(result.token_ids), expected), prompt
            spec = result.speculation
            assert spec.mode == "eagle"
            assert spec.target_steps + spec.accepted_tokens == len(result.token_ids)
            drafted += spec.draft_tokens
            accepted += spec.accepted_tokens
        stats = client.stats()
    assert drafted > 0 and accepted > 0  # the head's drafts were real, and some were right
    assert stats.speculation.cache_hits > 0  # pre-drafted from the head's own outputs
    # fp16 features of every committed position: 3 layers x 576 x 2 bytes each
    assert stats.feature_bytes > 0 and stats.feature_bytes % (3 * 576 * 2) == 0


@pytest.mark.timeout(900)
def test_eight_concurrent_streams_equal_the_reference(service, prompts, reference):
    async def eight():
        async with AsyncTandemClient(service.address) as client:

            async def one(prompt):
                result = await client.generate(
                    prompt, temperature=0, max_tokens=MAX_TOKENS, speculation="eagle"
                )
                return list(result.token_ids), result.speculation

            return await asyncio.gather(*(one(p) for p in prompts))

    results = asyncio.run(eight())
    for (tokens, _), expected in zip(results, reference, strict=True):
        assert ours(tokens, expected)
    assert sum(spec.accepted_tokens for _, spec in results) > 0


# Our own prompts, one domain (none from Spec-Bench: the drafter learns from what it serves).
LEARNING_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that counts the words in a text file.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function that removes duplicates from a list, keeping the order.",
    "Write a Python function that returns the largest of three numbers.",
]


@pytest.mark.timeout(900)
def test_online_learning_never_changes_outputs(service):
    def updates(client):
        drafters = client.stats().drafters
        return sum(d.head_updates_kept + d.head_updates_rolled_back for d in drafters)

    with TandemClient(service.address) as client:
        before = updates(client)
        deadline = time.monotonic() + 400
        served = 0
        while served < len(LEARNING_PROMPTS) or updates(client) == before:
            assert time.monotonic() < deadline, "no update of the head was judged"
            prompt = LEARNING_PROMPTS[served % len(LEARNING_PROMPTS)]
            for sampling in ({"temperature": 0}, {"temperature": 0.8, "seed": served}):
                off = client.generate(prompt, max_tokens=MAX_TOKENS, speculation="off", **sampling)
                on = client.generate(prompt, max_tokens=MAX_TOKENS, speculation="eagle", **sampling)
                assert list(on.token_ids) == list(off.token_ids), (prompt, sampling)
            served += 1
        drafter = client.stats().drafters[0]
    assert drafter.head_buffer_tokens > 0 and drafter.head_learn_s > 0
    assert drafter.head_version == drafter.head_updates_kept  # every kept update is a version


@pytest.mark.timeout(900)
def test_killed_drafter_fails_no_request_and_drafting_resumes(service, prompts, reference):
    pid = drafter_pid(service)
    assert pid is not None

    async def eight_streams_and_a_crash():
        async with AsyncTandemClient(service.address) as client:
            started = asyncio.Event()
            first = {"count": 0}

            async def one(prompt):
                ids = []
                stream = client.stream(
                    prompt, temperature=0, max_tokens=MAX_TOKENS, speculation="eagle"
                )
                async for chunk in stream:
                    if not ids and chunk.token_ids:
                        first["count"] += 1
                        if first["count"] == len(prompts):
                            started.set()
                    ids += chunk.token_ids
                return ids

            tasks = [asyncio.create_task(one(p)) for p in prompts]
            await started.wait()
            os.kill(pid, signal.SIGKILL)  # a real crash, mid-stream
            return await asyncio.gather(*tasks)

    for tokens, expected in zip(asyncio.run(eight_streams_and_a_crash()), reference, strict=True):
        assert ours(tokens, expected)
    with TandemClient(service.address) as client:
        deadline = time.monotonic() + 180
        while True:  # Ray restarts the drafter; it loads the head again, then drafts
            result = client.generate(
                prompts[0], temperature=0, max_tokens=MAX_TOKENS, speculation="eagle"
            )
            if result.speculation.draft_tokens > 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert result.speculation.draft_tokens > 0
        assert ours(list(result.token_ids), reference[0])


@pytest.mark.timeout(600)
def test_a_head_that_does_not_fit_is_refused_at_start(tmp_path):
    head = builtin_head("smollm2-135m-instruct")
    bad = tmp_path / "head"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(head / "model.safetensors")
    config = json.loads((head / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    service = ServiceProcess({"speculation": {"drafters": {"eagle_head": str(bad)}}})
    with pytest.raises(RuntimeError, match="did not start"):
        service.start()
    service.stop()
    log = "\n".join(service.log_lines)
    assert "speculation.drafters.eagle_head" in log
    assert "vocabulary of 32000 tokens, but the target's has 49152" in log, log[-2000:]
