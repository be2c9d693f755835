"""The logits tap on a real in-process vLLM engine: the candidates it hands the proposer line up
with the tokens the target verified (greedy: each position's top candidate is the token the
target committed after it)."""

from __future__ import annotations

import asyncio

import pytest

from tandem.speculation.ngram import NgramIndex
from tests.support.prompts import spec_bench_prompts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("worker_class_restored"),
]


class RecordingSession:
    """Stands where the speculation session goes; drafts with a real n-gram drafter."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int, tuple]] = []  # (request, committed tokens, candidates)

    def speculating(self) -> bool:
        return True  # keeps the tap on

    def propose(self, request_ids, num_tokens, token_ids, candidates=None, features=None):
        drafts = []
        for i, request_id in enumerate(request_ids):
            n = int(num_tokens[i])
            self.steps.append((request_id, n, candidates[i] if candidates else ()))
            index = NgramIndex()
            index.extend([int(t) for t in token_ids[i][:n]])
            drafts.append(index.propose(3))
        return drafts


def test_candidates_line_up_with_verified_tokens(model_path, tokenizer, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # as the target pool's env sets it
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import RequestOutputKind

    from tandem.plugins.engine_loop import EngineLoop
    from tandem.plugins.engine_setup import ATTACH, engine_args
    from tandem.speculation.settings import SpeculationConfig

    # The worker in this process ("uni"): the test reads the very session it attaches.
    user_args = {
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 1024,
        "distributed_executor_backend": "uni",
    }
    speculation = SpeculationConfig(num_speculative_tokens=3)
    loop = EngineLoop(EngineArgs(**engine_args(model_path, user_args, speculation)))
    session = RecordingSession()
    try:
        assert all(loop.call(lambda e: e.collective_rpc(ATTACH, args=(lambda: session, 4))))
        prompts = {
            f"r{i}": tokenizer.encode(p)
            for i, p in enumerate(spec_bench_prompts(2, ("rag", "summarization")))
        }

        async def run(request_id, ids):
            out = []
            params = SamplingParams(
                temperature=0, max_tokens=48, output_kind=RequestOutputKind.DELTA
            )
            async for output in loop.generate(request_id, ids, params):
                out += output.outputs[0].token_ids
            return ids + out

        async def both():
            return await asyncio.gather(*(run(r, ids) for r, ids in prompts.items()))

        sequences = dict(zip(prompts, asyncio.run(both()), strict=True))
    finally:
        loop.shutdown()
    previous: dict[str, int] = {}
    checked = drafted = 0
    for request_id, n, pairs in session.steps:
        sequence = sequences[request_id]
        committed = n - previous.get(request_id, n - 1)  # tokens this step added
        previous[request_id] = n
        # the last step may accept past max_tokens; the output stops there
        for j in range(min(committed, len(pairs), len(sequence) - n + committed)):
            token, candidates = pairs[j]
            assert token == sequence[n - committed - 1 + j]
            assert candidates[0] == sequence[n - committed + j]
            checked += 1
        drafted += len(pairs) > 1
    assert checked > 50 and drafted > 5  # plenty of positions, blocks with drafts among them
