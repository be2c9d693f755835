"""The target replica: a Ray actor around one in-process vLLM engine.

A thin shell: it turns an admitted request into vLLM SamplingParams, streams one `StepOutput`
per engine step back to the coordinator, and reports what the engine holds. With speculation on,
the engine's proposer is tandem's plugin, attached here to a speculation session that reaches the
drafter actors. Routing and validation live in the coordinator; what vLLM needs from tandem is
built in tandem.plugins.engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from tandem.cluster.figures import ReplicaFigures, RequestFigures

if TYPE_CHECKING:
    from tandem.cluster.config import ModelsConfig, SpeculationConfig, TargetPoolConfig
    from tandem.cluster.requests import PreparedRequest


@dataclass(frozen=True)
class StepOutput:
    """One engine step's new tokens of a request; the last also finishes it."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "stop", "length" or "abort" on the last one
    figures: RequestFigures | None = None  # on the last one
    logprobs: list | None = None  # per new token, with sampling.logprobs (positions below)
    prompt_logprobs: list | None = None  # per prompt token after the first, on the first one


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    node_id: str
    path: str  # the folder the engine loaded
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]


class TargetReplica:
    """Ray actor class (wrapped with ray.remote by the placement code)."""

    def __init__(
        self,
        replica_id: str,
        models: ModelsConfig,
        target: TargetPoolConfig,
        speculation: SpeculationConfig | None = None,
        drafters: list[Any] = (),
        features: tuple[int, ...] = (),
    ) -> None:
        from vllm.engine.arg_utils import EngineArgs

        from tandem.cluster.engine import EngineLoop
        from tandem.plugins.engine import APPLY_FIXES, ATTACH, engine_args

        self.replica_id = replica_id
        # Resolved on this node (fetched, prepared or baked in): never a path from another node.
        model_path = str(models.store().resolve(models.target))
        self.model_path = model_path
        self._loop = EngineLoop(
            EngineArgs(**engine_args(model_path, target.engine_args, speculation))
        )
        sampler = speculation.sampler if speculation is not None else None
        # tandem's exact speculative sampler (plugins/sampler.py) carries min_p itself.
        self._exact_sampler = sampler is not None and sampler.kind == "tandem"
        any_vllm = sampler is not None and sampler.any_vllm
        self._loop.call(
            lambda engine: engine.collective_rpc(APPLY_FIXES, args=(self._exact_sampler, any_vllm))
        )
        self.session = None
        if speculation is not None:
            from tandem.cluster.draft_pool import RayTransport
            from tandem.speculation.session import SpeculationSession

            self.session = SpeculationSession(RayTransport(list(drafters)), speculation)
            attached = self._loop.call(
                lambda engine: engine.collective_rpc(
                    ATTACH, args=(self.session, speculation.target_candidates, features)
                )
            )
            if not all(attached):
                raise RuntimeError("vLLM did not load tandem's proposer")
        self._served = 0
        self._generated = 0

    def info(self) -> ReplicaInfo:
        engine = self._loop.engine
        model_config = engine.model_config
        tokenizer = engine.get_tokenizer()
        eos = model_config.hf_config.eos_token_id
        eos_ids = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])})
        return ReplicaInfo(
            replica_id=self.replica_id,
            node_id=ray.get_runtime_context().get_node_id(),
            path=self.model_path,
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            eos_token_ids=[i for i in eos_ids if i is not None],
        )

    async def generate(self, request: PreparedRequest) -> AsyncIterator[StepOutput]:
        """Stream the request's new tokens step by step; the last output finishes it and
        carries its speculation figures. `request.request_id` names this submission (the
        coordinator makes it unique per submission, so a late abort of an earlier request
        with the client's same id cannot reach this one)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from tandem.cluster.engine import RequestAborted, StepFailed
        from tandem.cluster.requests import RequestError
        from tandem.speculation.session import RequestSpec

        sampling = request.sampling
        if self._exact_sampler and "min_p" in sampling:
            from tandem.plugins.sampler import MIN_P

            sampling = {**sampling, "extra_args": {MIN_P: sampling["min_p"]}}
            del sampling["min_p"]
        try:
            params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
        except ValueError as exc:  # vLLM's own limits, should the coordinator's miss one
            raise RequestError("INVALID_ARGUMENT", f"sampling: {exc}") from None
        rid, k = request.request_id, request.num_speculative_tokens
        if self.session is not None:
            self.session.register(rid, RequestSpec(request.mode, k, request.pipelined))
        self._served += 1
        steps = tokens = 0
        # A step that adds m tokens accepted the first m-1 drafts (positions 0..m-2).
        accepted_per_pos = [0] * k
        prompt_logprobs = None  # vLLM gives them with the first output
        try:
            async for output in self._loop.generate(rid, request.prompt_token_ids, params):
                completion = output.outputs[0]
                new = list(completion.token_ids)
                steps += bool(new)
                tokens += len(new)
                for position in range(min(len(new) - 1, k)):
                    accepted_per_pos[position] += 1
                logprobs = None
                if completion.logprobs is not None:
                    logprobs = positions(new, completion.logprobs)
                if output.prompt_logprobs is not None and prompt_logprobs is None:
                    prompt_logprobs = positions(
                        output.prompt_token_ids[1:], output.prompt_logprobs[1:]
                    )
                    first = prompt_logprobs
                else:
                    first = None
                if not output.finished:
                    yield StepOutput(new, completion.text, None, None, logprobs, first)
                    continue
                figures = self._figures(request, steps, tokens, accepted_per_pos)
                yield StepOutput(
                    new, completion.text, completion.finish_reason, figures, logprobs, first
                )
        except StepFailed:
            raise RequestError(
                "INTERNAL",
                f"request {rid}: the engine failed a step with it; the other requests went on",
            ) from None
        except RequestAborted:
            figures = self._figures(request, steps, tokens, accepted_per_pos)
            yield StepOutput([], "", "abort", figures)
        finally:
            self._generated += tokens
            if self.session is not None:
                self.session.release(rid)

    def _figures(
        self, request: PreparedRequest, steps: int, tokens: int, accepted_per_pos: list[int]
    ) -> RequestFigures:
        from tandem.speculation.session import SpeculationStats

        drafted = self.session.release(request.request_id) if self.session else SpeculationStats()
        return RequestFigures(
            mode=request.mode,
            target_steps=steps,
            draft_tokens=drafted.draft_tokens,
            accepted_tokens=tokens - steps,  # every target step yields its accepted drafts + 1
            drafts=drafted.drafts,
            cache_hits=drafted.cache_hits,
            cache_misses=drafted.cache_misses,
            accepted_per_pos=tuple(accepted_per_pos),
        )

    def abort(self, request_id: str) -> None:
        self._loop.abort(request_id)

    def stats(self) -> ReplicaFigures:
        return ReplicaFigures(
            replica_id=self.replica_id,
            engine_unfinished=self._loop.num_unfinished(),
            requests_served=self._served,
            generated_tokens=self._generated,
            steps=self._loop.steps,
            step_time_s=self._loop.step_time_s,
            session=self.session.stats() if self.session is not None else None,
        )

    def shutdown(self) -> None:
        self._loop.shutdown()


Entry = tuple[int, str, float, int]  # token id, its text, log-probability, rank


def positions(token_ids: list[int], logprobs: Any) -> list[tuple[Entry, list[Entry]]]:
    """vLLM's per-position logprob dicts as plain tuples (they cross Ray): the token at each
    position, and every entry vLLM gave there in its order (the sampled token first, then the
    most likely ones), which the OpenAI formats cut as vLLM's server does."""
    out = []
    for token_id, entries in zip(token_ids, logprobs, strict=True):
        top = [(t, lp.decoded_token or "", lp.logprob, lp.rank or 0) for t, lp in entries.items()]
        chosen = next(e for e in top if e[0] == token_id)
        out.append((chosen, top))
    return out
