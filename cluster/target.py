"""The target replica: a Ray actor around one in-process vLLM engine.

A thin shell: it turns plain request dicts into vLLM SamplingParams, streams per-step deltas back
as plain dicts, and reports what the engine holds. Routing and validation live in the coordinator.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import ray

# The engine must live in this process; set before vLLM reads its environment.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


class TargetReplica:
    """Ray actor class (wrapped with ray.remote by the placement code)."""

    def __init__(self, replica_id: str, model_path: str, engine_args: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import EngineArgs

        from tandem.cluster.engine import EngineLoop

        self.replica_id = replica_id
        self.model_path = model_path
        self._loop = EngineLoop(EngineArgs(model=model_path, **engine_args))
        self._served = 0
        self._generated = 0

    def info(self) -> dict[str, Any]:
        engine = self._loop.engine
        model_config = engine.model_config
        tokenizer = engine.get_tokenizer()
        eos = model_config.hf_config.eos_token_id
        eos_ids = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])})
        return {
            "replica_id": self.replica_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "path": self.model_path,
            "max_model_len": model_config.max_model_len,
            "vocab_size": model_config.get_vocab_size(),
            "eos_token_ids": [i for i in eos_ids if i is not None],
        }

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], sampling: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream {token_ids, text, finish_reason} per engine step; finish_reason on the last."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from tandem.cluster.engine import RequestAborted

        params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
        self._served += 1
        try:
            async for output in self._loop.generate(request_id, prompt_token_ids, params):
                completion = output.outputs[0]
                self._generated += len(completion.token_ids)
                yield {
                    "token_ids": list(completion.token_ids),
                    "text": completion.text,
                    "finish_reason": completion.finish_reason if output.finished else None,
                }
        except RequestAborted:
            yield {"token_ids": [], "text": "", "finish_reason": "abort"}

    def abort(self, request_id: str) -> None:
        self._loop.abort(request_id)

    def stats(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "engine_unfinished": self._loop.num_unfinished(),
            "requests_served": self._served,
            "generated_tokens": self._generated,
        }

    def shutdown(self) -> None:
        self._loop.shutdown()
