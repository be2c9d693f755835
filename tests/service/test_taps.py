"""The taps on a real in-process vLLM engine. The logits tap: the candidates it hands the proposer
line up with the tokens the target verified (greedy: each position's top candidate is the token
the target committed after it). The feature tap: EAGLE-3's features from the target's own
outputs equal what forward hooks read, and keep coming when the target runs compiled."""

from __future__ import annotations

import asyncio

import numpy as np
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


def in_process_engine(model_path, eager: bool = True, features: tuple[int, ...] = ()):
    """A target engine with tandem's proposer (k = 3) and its worker in this process ("uni"):
    a test reads the very session it attaches."""
    from vllm.engine.arg_utils import EngineArgs

    from tandem.plugins.engine_loop import EngineLoop
    from tandem.plugins.engine_setup import engine_args
    from tandem.speculation.settings import SpeculationConfig

    user_args = {
        "dtype": "float32",
        "enforce_eager": eager,
        "max_model_len": 1024,
        "distributed_executor_backend": "uni",
    }
    speculation = SpeculationConfig(num_speculative_tokens=3)
    return EngineLoop(EngineArgs(**engine_args(model_path, user_args, speculation, features)))


def greedy(loop, prompts: dict[str, list[int]], max_tokens: int) -> dict[str, list[int]]:
    """Each prompt's greedy output, all requests in the engine at once."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        temperature=0, max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA
    )

    async def run(request_id, ids):
        return [
            t async for o in loop.generate(request_id, ids, params) for t in o.outputs[0].token_ids
        ]

    async def together():
        return await asyncio.gather(*(run(r, ids) for r, ids in prompts.items()))

    return dict(zip(prompts, asyncio.run(together()), strict=True))


def test_candidates_line_up_with_verified_tokens(model_path, tokenizer, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # as the target pool's env sets it
    from tandem.plugins.engine_setup import ATTACH

    loop = in_process_engine(model_path)
    session = RecordingSession()
    try:
        assert all(loop.call(lambda e: e.collective_rpc(ATTACH, args=(lambda: session, 4))))
        prompts = {
            f"r{i}": tokenizer.encode(p)
            for i, p in enumerate(spec_bench_prompts(2, ("rag", "summarization")))
        }
        outputs = greedy(loop, prompts, 48)
        sequences = {r: prompts[r] + outputs[r] for r in prompts}
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


LAYERS = (15, 0, 29)  # a head's order, not the decoder's; 0 is the embeddings


class FeatureSession:
    """Stands where the speculation session goes: asks for every request's features, drafts
    nothing, and keeps each position's row; `hooks`, when set, is a hook-reading FeatureTap
    on the same model, whose rows it keeps beside."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], np.ndarray] = {}
        self.hooked: dict[tuple[str, int], np.ndarray] = {}
        self.hooks = None

    def speculating(self) -> bool:
        return True

    def wants_features(self, request_ids):
        return [True] * len(request_ids)

    def propose(self, request_ids, num_tokens, token_ids, candidates=None, features=None):
        keep(self.rows, request_ids, features)
        if self.hooks is not None:
            engine_ids = list(self.hooks.runner.input_batch.req_ids[: len(request_ids)])
            taken = self.hooks.take(engine_ids)
            keep(self.hooked, request_ids, [taken.get(e) for e in engine_ids])
        return [[] for _ in request_ids]


def keep(into: dict, request_ids, features) -> None:
    for request_id, rows in zip(request_ids, features, strict=True):
        if rows is not None:
            first, block = rows
            for j, row in enumerate(block):
                into[(request_id, first + j)] = row


def run_features(model_path, tokenizer, eager: bool, hooks: bool):
    """Two greedy requests on an engine serving features for LAYERS: (their tokens, the
    session that kept the features, the engine's compilation mode)."""
    from tandem.plugins.engine_setup import ATTACH
    from tandem.plugins.taps import FeatureTap

    loop = in_process_engine(model_path, eager, LAYERS)
    session = FeatureSession()
    try:
        mode = loop.call(lambda e: e.vllm_config.compilation_config.mode)
        assert all(loop.call(lambda e: e.collective_rpc(ATTACH, args=(lambda: session, 0, LAYERS))))
        if hooks:

            def install(worker):
                session.hooks = FeatureTap(worker.model_runner, LAYERS)
                session.hooks.install(worker.model_runner.get_model())

            loop.call(lambda e: e.collective_rpc(install))
        prompts = {f"r{i}": tokenizer.encode(p) for i, p in enumerate(spec_bench_prompts(2))}
        return list(greedy(loop, prompts, 24).values()), session, mode
    finally:
        loop.shutdown()


def test_features_from_the_models_outputs_also_when_compiled(model_path, tokenizer, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm.config import CompilationMode

    tokens, eager, mode = run_features(model_path, tokenizer, eager=True, hooks=True)
    assert mode == CompilationMode.NONE
    assert len(eager.rows) > 100 and eager.rows.keys() == eager.hooked.keys()
    for key, row in eager.rows.items():  # the model's outputs and the hooks read the same
        assert row.shape == (3 * 576,) and np.array_equal(row, eager.hooked[key]), key

    # Compiled (TorchDynamo traces the forward; its eager backend on CPU CI, as vLLM's own CI
    # does, instead of a minute of inductor), and the same features come out of it.
    monkeypatch.setenv("VLLM_CPU_CI_ENV", "1")
    compiled_tokens, compiled, mode = run_features(model_path, tokenizer, eager=False, hooks=False)
    assert mode != CompilationMode.NONE
    assert compiled_tokens == tokens and compiled.rows.keys() == eager.rows.keys()
    for key, row in compiled.rows.items():
        assert np.allclose(row, eager.rows[key], rtol=1e-2, atol=1e-2), key
