"""A failed engine step costs only the request that broke it (tandem.plugins.engine_loop), on the
real vLLM engine with remote-style drafts flowing, and faults injected where vLLM's sampler
fails (tests/faulty_worker.py): the culprit fails with StepFailed, every other request finishes
with exactly the tokens it gives without any fault."""

from __future__ import annotations

import asyncio
import os
from unittest import mock

import pytest

from tandem.speculation.protocol import Mode
from tandem.speculation.request_sync import RequestSpec
from tests.support.local_transport import LocalTransport, session_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS = [
    "Repeat five times: red green blue.",
    "Count from one to twenty in words.",
    "List the days of the week, then list them again.",
]
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


@pytest.fixture(scope="module")
def engine(model_path, worker_class_restored):
    """An EngineLoop with tandem's proposer, fed by in-process ngram drafters."""
    from vllm.engine.arg_utils import EngineArgs

    from tandem.plugins.engine_loop import EngineLoop
    from tandem.plugins.engine_setup import APPLY_FIXES, ATTACH, engine_args
    from tandem.speculation.settings import SpeculationConfig

    args = engine_args(
        model_path,
        # The worker in this process ("uni"): the test holds the very session it attaches.
        {
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 1024,
            "distributed_executor_backend": "uni",
        },
        SpeculationConfig(num_speculative_tokens=4),
    )
    args["worker_extension_cls"] = "tests.support.faulty_worker.FaultyWorkerExtension"
    with mock.patch.dict(os.environ, ENGINE_ENV):
        loop = EngineLoop(EngineArgs(**args))
    session = session_for(LocalTransport(), timeout_s=5.0)
    loop.call(lambda e: e.collective_rpc(APPLY_FIXES, args=(True, False)))  # exact sampler
    loop.call(lambda e: e.collective_rpc(ATTACH, args=(lambda: session, 0)))
    yield loop, session
    loop.shutdown()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.encode(p) for p in PROMPTS]


async def generate(engine, request_id, prompt, started=None, **sampling) -> list[int]:
    """One request through the loop as the target replica runs it (greedy ngram by default);
    `started` is set once it has streamed a few tokens."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    loop, session = engine
    sampling = {"temperature": 0.0, "max_tokens": 16, "ignore_eos": True, **sampling}
    params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
    session.register(request_id, RequestSpec(Mode.NGRAM, 4))
    ids: list[int] = []
    try:
        async for output in loop.generate(request_id, prompt, params):
            ids += output.outputs[0].token_ids
            if started is not None and len(ids) >= 4:
                started.set()
    finally:
        session.release(request_id)
    return ids


@pytest.fixture(scope="module")
def reference(engine, prompts):
    """Each prompt's greedy output, alone and without faults."""

    async def run():
        return [await generate(engine, f"ref-{i}", p) for i, p in enumerate(prompts)]

    return asyncio.run(run())


def poison(engine, request_id: str, from_length: int = 0) -> None:
    args = ([request_id], from_length)
    engine[0].call(lambda e: e.collective_rpc("tandem_test_poison", args=args))


async def run_beside(engine, prompts, tag, culprit=None, after_start=None):
    """The reference prompts streaming together; once all have started, `culprit` (a coroutine
    factory) joins and `after_start()` runs. Returns the outputs and the culprit's exception."""
    started = [asyncio.Event() for _ in prompts]
    tasks = [
        asyncio.create_task(generate(engine, f"{tag}-{i}", p, started[i]))
        for i, p in enumerate(prompts)
    ]
    await asyncio.gather(*(event.wait() for event in started))
    error = None
    if after_start is not None:
        after_start()
    if culprit is not None:
        try:
            await culprit()
        except Exception as exc:
            error = exc
    return await asyncio.gather(*tasks), error


def test_the_request_that_breaks_a_step_fails_alone(engine, prompts, reference):
    """A request that makes every step it is in fail joins three greedy streams with drafts
    flowing: it fails with StepFailed after one failed step; the streams finish untouched."""
    from tandem.plugins.engine_loop import StepFailed

    loop, session = engine
    poison(engine, "bad-1")
    failed_before, drafted_before = loop.failed_steps, session.stats().speculation.draft_tokens

    outputs, error = asyncio.run(
        run_beside(engine, prompts, "a", culprit=lambda: generate(engine, "bad-1", prompts[0]))
    )
    assert isinstance(error, StepFailed) and "bad-1" in str(error)
    assert outputs == reference
    assert loop.failed_steps == failed_before + 1  # blamed at once: the only newcomer
    assert session.stats().speculation.draft_tokens > drafted_before  # drafts did flow
    assert loop.num_unfinished() == 0


def test_a_request_that_breaks_mid_decode_is_found_by_rejoining_one_at_a_time(
    engine, prompts, reference
):
    """A request breaks steps only once it has decoded 8 tokens: no newcomer to blame, so every
    request rejoins (as a continuation) one per step, and the culprit is the one that breaks a
    step alone. A top_k sampled request beside it finishes its full length."""
    from tandem.plugins.engine_loop import StepFailed

    loop, _ = engine
    poison(engine, "bad-2", from_length=len(prompts[1]) + 8)
    failed_before = loop.failed_steps

    async def scenario():
        culprit = asyncio.create_task(generate(engine, "bad-2", prompts[1]))
        sampled = asyncio.create_task(
            generate(engine, "sampled", prompts[2], temperature=1.0, top_k=40, top_p=0.9)
        )
        outputs, _ = await run_beside(engine, prompts, "b")
        results = await asyncio.gather(culprit, sampled, return_exceptions=True)
        return outputs, results

    outputs, (error, sampled) = asyncio.run(scenario())
    assert isinstance(error, StepFailed) and "bad-2" in str(error)
    assert outputs == reference
    assert len(sampled) == 16
    assert loop.failed_steps == failed_before + 2  # once mid-decode, once when it rejoined
    assert loop.num_unfinished() == 0


def test_a_transient_step_failure_fails_no_request(engine, prompts, reference):
    """A step that fails once, whoever is in it: everyone rejoins and finishes as if nothing
    happened."""
    loop, _ = engine
    failed_before = loop.failed_steps

    def fail_next_step():
        loop.call(lambda e: e.collective_rpc("tandem_test_fail_once"))

    outputs, _ = asyncio.run(run_beside(engine, prompts, "c", after_start=fail_next_step))
    assert outputs == reference
    assert loop.failed_steps == failed_before + 1
    # ...and the engine goes on serving.
    assert asyncio.run(generate(engine, "after", prompts[0])) == reference[0]


def test_a_structured_request_fails_with_the_step_instead_of_resuming(engine, prompts, reference):
    """vLLM starts a request's grammar at its output's start, so a structured request cannot
    continue from its delivered tokens: when a step fails under it, it ends with StepFailed
    (never with output that breaks its constraint); the others resume as before."""
    from vllm.sampling_params import StructuredOutputsParams

    from tandem.plugins.engine_loop import StepFailed

    loop, _ = engine

    def fail_next_step():
        loop.call(lambda e: e.collective_rpc("tandem_test_fail_once"))

    async def scenario():
        started = asyncio.Event()
        constraint = StructuredOutputsParams(regex="(red green blue )+red")
        structured = asyncio.create_task(
            generate(
                engine, "regex", prompts[0], started, max_tokens=96, structured_outputs=constraint
            )
        )
        await started.wait()
        outputs, _ = await run_beside(engine, prompts, "d", after_start=fail_next_step)
        (error,) = await asyncio.gather(structured, return_exceptions=True)
        return outputs, error

    outputs, error = asyncio.run(scenario())
    assert isinstance(error, StepFailed) and "cannot resume" in str(error), error
    assert outputs == reference
    assert loop.num_unfinished() == 0
