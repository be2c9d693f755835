"""The target replica: a Ray actor around one in-process vLLM engine.

A thin shell: it turns plain request dicts into vLLM SamplingParams, streams per-step deltas back
as plain dicts, and reports what the engine holds. With speculation on, the engine's proposer is
tandem's plugin, attached here to a speculation session that reaches the drafter actors.
Routing and validation live in the coordinator.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import ray

from tandem.speculation.session import SpeculationStats

# The engine must live in this process; set before vLLM reads its environment.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

PROPOSER = "tandem.plugins.proposer.TandemProposer"
WORKER_EXTENSION = "tandem.plugins.worker.TandemWorkerExtension"


class TargetReplica:
    """Ray actor class (wrapped with ray.remote by the placement code)."""

    def __init__(
        self,
        replica_id: str,
        model_path: str,
        engine_args: dict[str, Any],
        speculation: dict[str, Any] | None = None,
        drafters: list[Any] = (),
    ) -> None:
        from vllm.engine.arg_utils import EngineArgs

        from tandem.cluster.engine import EngineLoop

        self.replica_id = replica_id
        self.model_path = model_path
        args = dict(engine_args, worker_extension_cls=WORKER_EXTENSION)
        if speculation:
            args["speculative_config"] = {
                "method": "custom_class",
                "model": PROPOSER,
                "num_speculative_tokens": speculation["num_speculative_tokens"],
            }
            if speculation["mirror"]:
                args["hf_overrides"] = mirror_overrides(
                    model_path, args.get("hf_overrides"), speculation["mirror"]
                )
        self._loop = EngineLoop(EngineArgs(model=model_path, **args))
        self._loop.call(lambda engine: engine.collective_rpc("tandem_apply_fixes"))
        self.session = None
        if speculation:
            from tandem.cluster.draft_pool import RayTransport
            from tandem.speculation.policy import DraftLengthPolicy
            from tandem.speculation.session import SpeculationSession

            self.session = SpeculationSession(
                RayTransport(list(drafters)),
                speculation["timeout_s"],
                speculation["sampled_requests"],
                speculation["cache_outcomes"],
                speculation["cache_fanout"],
                DraftLengthPolicy(*speculation["draft_length"]),
                mirror=bool(speculation["mirror"]),
            )
            attached = self._loop.call(
                lambda engine: engine.collective_rpc(
                    "tandem_attach", args=(self.session, speculation["candidates"])
                )
            )
            if not all(attached):
                raise RuntimeError("vLLM did not load tandem's proposer")
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
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: dict[str, Any],
        mode: str = "off",
        k: int = 0,
        pipelined: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream {token_ids, text, finish_reason} per engine step; the last one also carries
        finish_reason and the request's speculation figures. `request_id` names this submission
        (the coordinator makes it unique per submission, so a late abort of an earlier request
        with the client's same id cannot reach this one)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, SamplingType

        from tandem.cluster.engine import RequestAborted, StepFailed
        from tandem.cluster.requests import RequestError
        from tandem.speculation.protocol import Mode
        from tandem.speculation.session import RequestSpec

        try:
            params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
        except ValueError as exc:  # vLLM's own limits, should the coordinator's miss one
            raise RequestError("INVALID_ARGUMENT", f"sampling: {exc}") from None
        flush = None
        if self.session is not None:
            greedy = params.sampling_type == SamplingType.GREEDY
            spec = RequestSpec(Mode(mode), k, greedy, pipelined)
            self.session.register(request_id, spec)
            flush = functools.partial(self.session.must_flush_before, spec)
        self._served += 1
        steps = tokens = 0
        # A step that adds m tokens accepted the first m-1 drafts (positions 0..m-2).
        accepted_per_pos = [0] * k
        try:
            async for output in self._loop.generate(request_id, prompt_token_ids, params, flush):
                completion = output.outputs[0]
                new = list(completion.token_ids)
                steps += bool(new)
                tokens += len(new)
                for position in range(min(len(new) - 1, k)):
                    accepted_per_pos[position] += 1
                step = {"token_ids": new, "text": completion.text, "finish_reason": None}
                if output.finished:
                    step["finish_reason"] = completion.finish_reason
                    step["speculation"] = self._figures(
                        request_id, mode, steps, tokens, accepted_per_pos
                    )
                yield step
        except StepFailed:
            raise RequestError(
                "INTERNAL",
                f"request {request_id}: the engine failed a step with it; the other requests "
                "went on",
            ) from None
        except RequestAborted:
            yield {
                "token_ids": [],
                "text": "",
                "finish_reason": "abort",
                "speculation": self._figures(request_id, mode, steps, tokens, accepted_per_pos),
            }
        finally:
            self._generated += tokens
            if self.session is not None:
                self.session.release(request_id)

    def _figures(
        self, request_id: str, mode: str, steps: int, tokens: int, accepted_per_pos: list[int]
    ) -> dict[str, Any]:
        """The request's speculation figures; `drafts` and `accepted_per_pos` feed metrics only."""
        figures = self.session.release(request_id) if self.session else SpeculationStats()
        drafted = figures.draft_tokens
        accepted = tokens - steps  # every target step yields its accepted drafts plus one
        return {
            "mode": mode,
            "cache_hits": figures.cache_hits,
            "cache_misses": figures.cache_misses,
            "drafts": figures.rounds,
            "accepted_per_pos": accepted_per_pos,
            "draft_tokens": drafted,
            "accepted_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_accepted_length": tokens / steps if steps else 0.0,
            "target_steps": steps,
        }

    def abort(self, request_id: str) -> None:
        self._loop.abort(request_id)

    def stats(self) -> dict[str, Any]:
        out = {
            "replica_id": self.replica_id,
            "engine_unfinished": self._loop.num_unfinished(),
            "requests_served": self._served,
            "generated_tokens": self._generated,
            "steps": self._loop.steps,
            "step_time_s": self._loop.step_time_s,
            "failed_steps": self._loop.failed_steps,
        }
        if self.session is not None:
            session = self.session.stats()
            out["session"] = {**asdict(session), "speculation": asdict(session.speculation)}
        return out

    def shutdown(self) -> None:
        self._loop.shutdown()


def mirror_overrides(
    model_path: str, overrides: dict[str, Any] | None, mirror: dict[str, Any]
) -> dict[str, Any]:
    """hf_overrides that load the target as tandem's Mirror-SD class (tandem.plugins.mirror)."""
    import json
    from pathlib import Path

    from tandem.plugins import MIRROR_ARCHITECTURE

    architectures = json.loads((Path(model_path) / "config.json").read_text()).get("architectures")
    if architectures != ["LlamaForCausalLM"]:
        raise ValueError(
            f"speculation.mirror needs a Llama-architecture target; {model_path} is "
            f"{architectures}. Set speculation.mirror.enabled: false"
        )
    return {
        **(overrides or {}),
        "architectures": [MIRROR_ARCHITECTURE],
        "tandem_mirror_layer": mirror["layer"],
        "tandem_mirror_top_k": mirror["top_k"],
    }
