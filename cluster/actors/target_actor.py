"""The target replica: a Ray actor around one in-process vLLM engine.

A thin shell: it turns an admitted request into vLLM SamplingParams (`submit`), sends each
engine step's outputs back to the coordinator, and reports what the engine holds. The outputs of
all the requests a coordinator submitted leave as one `OutputBatch` per engine step on the
coordinator's socket, sent by the engine thread itself (tandem.cluster.transport.output_channel),
so no other thread of this process runs per step; a long-lived Ray stream (`outputs`) that yields
nothing tells the coordinator when this replica dies, and tells the replica when the coordinator
goes away (its requests are aborted then). With speculation on, the engine's proposer is
tandem's plugin, and the speculation session it calls is built in the engine's worker (which may
be a process of its own) from plain values; this actor reaches it between steps
(tandem.plugins.session_proxy) and tells it where restarted drafters listen
(tandem.cluster.transport.directory). Routing and validation live in the coordinator; what vLLM
needs from tandem is built in tandem.plugins.engine_setup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from tandem.cluster.telemetry.figures import ReplicaFigures, RequestFigures, WireTraffic
from tandem.cluster.transport.messages import OutputBatch, PreparedRequest, RequestError, StepOutput

if TYPE_CHECKING:
    from tandem.cluster.config.deployment import ModelsConfig
    from tandem.cluster.config.pools import TargetPoolConfig
    from tandem.cluster.transport.sockets import Endpoint
    from tandem.speculation.settings import SpeculationConfig


@dataclass
class _Running:
    """A request in the engine, and what its outputs so far add up to."""

    request: PreparedRequest
    subscriber: str
    steps: int = 0
    tokens: int = 0
    # A step that adds m tokens accepted the first m-1 drafts (positions 0..m-2).
    accepted_per_pos: list[int] = field(default_factory=list)
    prompt_logprobs_sent: bool = False  # vLLM gives them with the first output


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    node_id: str
    path: str  # the folder the engine loaded
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]
    engine_cpus: list[int]  # the CPUs its engine computes on (tandem.cluster.config.cpus); []: any


class Subscription:
    """One coordinator's outputs, as the engine thread hands them on (a `Consumer` of
    tandem.plugins.engine_loop): each step's batch, made into `StepOutput`s, sent on its socket."""

    def __init__(self, replica: TargetReplica, endpoint: Endpoint) -> None:
        from tandem.cluster.transport.output_channel import OutputSink

        self._replica = replica
        self._sink: OutputSink = OutputSink(endpoint)

    def put(self, items: list[tuple[str, Any]]) -> bool:
        outputs = [self._replica.step_output(rid, item) for rid, item in items]
        if not (outputs := [o for o in outputs if o is not None]):
            return True
        if self._sink.send(OutputBatch(outputs, time.time())):
            return True
        for output in outputs:  # the coordinator is gone: the engine aborts these
            if output.finish_reason is None:
                self._replica.step_output(output.request_id, RuntimeError("subscriber gone"))
        return False

    def close(self) -> None:
        self._sink.close()


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
        index: int = 0,
    ) -> None:
        """`drafters`: the drafter replicas' handles (they may still be starting: the engine's
        worker finds them through this actor's directory). `index`: this replica's place in its
        pool, which picks its engine's CPUs."""
        from vllm.engine.arg_utils import EngineArgs

        from tandem.cluster.config.cpus import place_engine
        from tandem.plugins.engine_loop import EngineLoop
        from tandem.plugins.engine_setup import APPLY_FIXES, ATTACH, engine_args, own_process

        self.replica_id = replica_id
        # Resolved on this node (fetched, prepared or baked in): never a path from another node.
        model_path = str(models.store().resolve(models.target))
        self.model_path = model_path
        args = engine_args(model_path, target.engine_args, speculation, features)
        binding = target.core_binding()
        self.engine_cpus = place_engine(binding, index, own_process(args))
        self._loop = EngineLoop(EngineArgs(**args))
        sampler = speculation.sampler if speculation is not None else None
        # tandem's exact speculative sampler (plugins/sampler.py) carries min_p itself.
        self._exact_sampler = sampler is not None and sampler.kind == "tandem"
        any_vllm = sampler is not None and sampler.any_vllm
        self._loop.call(
            lambda engine: engine.collective_rpc(APPLY_FIXES, args=(self._exact_sampler, any_vllm))
        )
        self.session = None
        self.directory = None
        if speculation is not None:
            from tandem.cluster.transport.directory import DirectoryServer
            from tandem.cluster.transport.draft_pool import RemoteSession
            from tandem.plugins.session_proxy import SessionProxy

            self.directory = DirectoryServer(drafters)
            make_session = RemoteSession(speculation, len(drafters), self.directory.endpoint)
            attached = self._loop.call(
                lambda engine: engine.collective_rpc(
                    ATTACH, args=(make_session, speculation.target_candidates, features)
                )
            )
            if not all(attached):
                raise RuntimeError("vLLM did not load tandem's proposer")
            self.session = SessionProxy(self._loop)
        self._served = 0
        self._generated = 0
        # Entered by `submit`, left on the engine thread (`Subscription.put`).
        self._running: dict[str, _Running] = {}
        self._subscriptions: dict[str, Subscription] = {}  # one per coordinator

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
            engine_cpus=sorted(self.engine_cpus or ()),
        )

    async def submit(self, request: PreparedRequest, subscriber: str, endpoint: Endpoint) -> None:
        """Start a request; its outputs go to `subscriber`'s socket at `endpoint`.
        `request.request_id` names this submission (the coordinator makes it unique per
        submission, so a late abort of an earlier request with the client's same id cannot
        reach this one)."""
        from tandem.plugins.vllm_io import sampling_params
        from tandem.speculation.request_sync import RequestSpec

        try:
            params = sampling_params(request.sampling, self._exact_sampler)
        except ValueError as exc:  # vLLM's own limits, should the coordinator's miss one
            raise RequestError("INVALID_ARGUMENT", f"sampling: {exc}") from None
        rid, k = request.request_id, request.num_speculative_tokens
        if self.session is not None:
            self.session.register(rid, RequestSpec(request.mode, k, request.pipelined))
        self._served += 1
        subscription = self._subscriptions.get(subscriber)
        if subscription is None:
            subscription = self._subscriptions[subscriber] = Subscription(self, endpoint)
        self._running[rid] = _Running(request, subscriber, accepted_per_pos=[0] * k)
        self._loop.add(rid, request.prompt_token_ids, params, subscription)

    async def outputs(self, subscriber: str) -> AsyncIterator[None]:
        """Open while both ends live: it yields nothing, and breaks for the coordinator when
        this replica dies. When the coordinator closes it, its unfinished requests are
        aborted and its socket closed (on the engine thread, after the aborts)."""
        try:
            await asyncio.Event().wait()
            yield  # never reached: this is the shape of a Ray stream
        finally:
            for rid, running in list(self._running.items()):
                if running.subscriber == subscriber:
                    self._loop.abort(rid)
            subscription = self._subscriptions.pop(subscriber, None)
            if subscription is not None:
                self._loop.later(lambda engine: subscription.close())

    def step_output(self, rid: str, item: Any) -> StepOutput | None:
        """A request's output (or the exception that ended it) as the coordinator gets it;
        None for a request already forgotten (its subscriber went away)."""
        from tandem.cluster.transport.messages import RequestError
        from tandem.plugins.engine_loop import RequestAborted, StepFailed
        from tandem.plugins.vllm_io import Refused, positions

        running = self._running.get(rid)
        if running is None:
            return None
        if isinstance(item, BaseException):
            error: Exception | None = None
            if isinstance(item, StepFailed):
                error = RequestError(
                    "INTERNAL",
                    f"request {rid}: the engine failed a step with it; the other requests went on",
                )
            elif isinstance(item, Refused):  # by vLLM as it added the request
                error = RequestError("INVALID_ARGUMENT", f"sampling: {item}")
            elif not isinstance(item, RequestAborted):
                error = RuntimeError(f"request {rid}: {type(item).__name__}: {item}")
            return StepOutput(rid, [], "", "abort", self._finish(rid), error=error)
        completion = item.outputs[0]
        new = list(completion.token_ids)
        running.steps += bool(new)
        running.tokens += len(new)
        for position in range(min(len(new) - 1, len(running.accepted_per_pos))):
            running.accepted_per_pos[position] += 1
        logprobs = None
        if completion.logprobs is not None:
            logprobs = positions(new, completion.logprobs)
        prompt_logprobs = None
        if item.prompt_logprobs is not None and not running.prompt_logprobs_sent:
            running.prompt_logprobs_sent = True
            prompt_logprobs = positions(item.prompt_token_ids[1:], item.prompt_logprobs[1:])
        if not item.finished:
            return StepOutput(rid, new, completion.text, None, None, logprobs, prompt_logprobs)
        figures = self._finish(rid)
        return StepOutput(
            rid, new, completion.text, completion.finish_reason, figures, logprobs, prompt_logprobs
        )

    def _finish(self, rid: str) -> RequestFigures:
        """Forget a finished or aborted request; its figures."""
        from tandem.speculation.session_stats import SpeculationStats

        running = self._running.pop(rid)
        self._generated += running.tokens
        drafted = self.session.release(rid) if self.session else SpeculationStats()
        return RequestFigures(
            mode=running.request.mode,
            target_steps=running.steps,
            draft_tokens=drafted.draft_tokens,
            accepted_tokens=running.tokens - running.steps,  # a step yields its accepted + 1
            drafts=drafted.drafts,
            cache_hits=drafted.cache_hits,
            cache_misses=drafted.cache_misses,
            skipped_waits=drafted.skipped_waits,
            accepted_per_pos=tuple(running.accepted_per_pos),
            sources=drafted.sources,
        )

    def abort(self, request_id: str) -> None:
        self._loop.abort(request_id)

    async def stats(self) -> ReplicaFigures:
        """The replica's figures; the session's are asked of the engine's worker between
        steps, off this actor's event loop."""
        session, wire = None, WireTraffic()
        if self.session is not None:
            session, wire = await asyncio.to_thread(self.session.stats)
        return ReplicaFigures(
            replica_id=self.replica_id,
            engine_unfinished=self._loop.num_unfinished(),
            requests_served=self._served,
            generated_tokens=self._generated,
            engine=self._loop.times(),
            gauges=self._loop.gauges.latest(),
            session=session,
            wire=wire,
        )

    def shutdown(self) -> None:
        self._loop.shutdown(last=self.session.close if self.session is not None else None)
        if self.directory is not None:
            self.directory.close()
