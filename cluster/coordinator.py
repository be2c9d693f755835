"""The coordinator: admits requests, routes them to target replicas, streams results back.

It runs in the front-door process (the gRPC server, or a Ray Serve replica) as a Ray driver,
over a deployment that tandem.cluster.bootstrap brought up. Each request goes to the replica
with the fewest outstanding requests; a request that is cancelled, times out or is aborted is
aborted in its replica's engine too. Outputs come back on one Ray stream per replica
(`ReplicaStream`), one batch per engine step, and are handed to each request's own queue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import ray

from tandem.cluster import bootstrap
from tandem.cluster.bootstrap import Deployment
from tandem.cluster.config import TandemConfig
from tandem.cluster.figures import (
    Breakdown,
    Counters,
    DeliveryTimes,
    DrafterFigures,
    DrafterLoad,
    RequestFigures,
    ratio,
)
from tandem.cluster.requests import Limits, PreparedRequest, RequestError, prepare
from tandem.cluster.target import OutputBatch
from tandem.protos import tandem_pb2 as pb


@dataclass
class Chunk:
    """One step's new tokens; the last chunk of a request also has the finish fields."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "stop", "length" or "abort" on the last chunk
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float = 0.0
    time_per_output_token_s: float = 0.0
    total_s: float = 0.0
    figures: RequestFigures | None = None  # the request's speculation figures, on the last chunk


class ReplicaStream:
    """One target replica's outputs for this coordinator: a long-lived Ray stream, read by a
    task that hands each request's outputs to its queue (with when the batch arrived). If the
    stream breaks (the replica died), every waiting request gets the error; the next request
    opens a new stream."""

    def __init__(self, actor: Any, subscriber: str, counters: Counters) -> None:
        self.actor = actor
        self.subscriber = subscriber
        self.counters = counters
        self.queues: dict[str, asyncio.Queue] = {}
        self._task: asyncio.Task | None = None

    def open(self, request_id: str) -> asyncio.Queue:
        """A queue for a request's outputs; reads the stream if nobody does on this loop."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._read())
        queue = self.queues[request_id] = asyncio.Queue()
        return queue

    async def _read(self) -> None:
        stream = self.actor.outputs.remote(self.subscriber)
        try:
            async for ref in stream:
                batch: OutputBatch = await ref
                arrived = time.perf_counter()
                delay = max(0.0, time.time() - batch.sent_at)
                self.counters.delivery += DeliveryTimes(batches=1, ray_stream_s=delay)
                for step in batch.outputs:
                    queue = self.queues.get(step.request_id)
                    if queue is not None:
                        queue.put_nowait((step, arrived))
        except Exception as exc:  # the replica died: fail what waits on it
            for queue in self.queues.values():
                queue.put_nowait(exc)
        finally:
            ray.cancel(stream)


class Coordinator:
    def __init__(self, config: TandemConfig, deployment: Deployment) -> None:
        from transformers import AutoTokenizer

        self.config = config
        self.deployment = deployment
        self.actors = deployment.targets.actors
        info = deployment.target_infos[0]
        self.tokenizer = AutoTokenizer.from_pretrained(info.path)
        spec = config.speculation
        self.limits = Limits(
            max_model_len=info.max_model_len,
            vocab_size=info.vocab_size,
            max_tokens=config.server.max_tokens,
            default_max_tokens=config.server.default_max_tokens,
            modes=deployment.modes(),
            default_mode=spec.default_mode if spec.enabled else "off",
            num_speculative_tokens=spec.num_speculative_tokens,
            sampled_requests=spec.sampled_requests,
            pipelined=spec.pipeline.enabled,
        )
        self.outstanding = [0] * len(self.actors)
        self.running: dict[str, int] = {}  # request id -> replica index
        self.counters = Counters()
        self.draining = False
        # Called with the last chunk of every request (a front door's metrics observe it).
        self.on_finished: list[Callable[[Chunk], None]] = []
        self._next = 0
        subscriber = uuid.uuid4().hex
        self.streams = [ReplicaStream(a, subscriber, self.counters) for a in self.actors]

    @classmethod
    def start(cls, config: TandemConfig) -> Coordinator:
        return cls(config, bootstrap.start(config))

    # ---- requests -----------------------------------------------------------------------------

    def admit(self, request: pb.GenerateRequest) -> PreparedRequest:
        """Validate and admit a request, or raise RequestError (counted as rejected)."""
        try:
            if self.draining:
                raise RequestError("UNAVAILABLE", "the server is shutting down; retry elsewhere")
            if len(self.running) >= self.config.server.max_inflight:
                raise RequestError(
                    "RESOURCE_EXHAUSTED",
                    f"{len(self.running)} requests in flight, the limit "
                    f"(server.max_inflight); retry later",
                )
            prepared = prepare(request, self.tokenizer, self.limits)
            if prepared.request_id in self.running:
                raise RequestError(
                    "ALREADY_EXISTS", f"request_id: {prepared.request_id!r} is already running"
                )
        except RequestError:
            self.counters.requests_rejected += 1
            raise
        return prepared

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        """Stream one admitted request; leaving the iteration early aborts it in the engine."""
        replica = self._pick_replica()
        actor = self.actors[replica]
        rid = prepared.request_id
        self.running[rid] = replica
        self.outstanding[replica] += 1
        self.counters.requests_total += 1
        self.counters.prompt_tokens += len(prepared.prompt_token_ids)
        start = time.monotonic()
        first = last = start
        produced = 0
        finish_reason = None
        stream = self.streams[replica]
        queue = stream.open(rid)
        try:
            await actor.submit.remote(prepared, stream.subscriber)
            while finish_reason is None:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                step, arrived = item
                waited = time.perf_counter() - arrived
                self.counters.delivery += DeliveryTimes(chunks=1, coordinator_s=waited)
                now = time.monotonic()
                if step.error is not None:
                    raise RuntimeError(step.error)
                if step.token_ids:
                    if produced == 0:
                        first = now
                    last = now
                    produced += len(step.token_ids)
                finish_reason = step.finish_reason
                chunk = Chunk(rid, step.token_ids, step.text, finish_reason)
                if finish_reason is not None:
                    chunk.prompt_tokens = len(prepared.prompt_token_ids)
                    chunk.completion_tokens = produced
                    chunk.time_to_first_token_s = first - start
                    chunk.time_per_output_token_s = (last - first) / max(produced - 1, 1)
                    chunk.total_s = now - start
                    chunk.figures = step.figures
                    self.counters.add(step.figures)
                    for observe in self.on_finished:
                        observe(chunk)
                yield chunk
        except ray.exceptions.RayActorError as exc:
            self.counters.requests_failed += 1
            raise RequestError("UNAVAILABLE", f"target replica {replica} died: {exc}") from None
        except Exception:
            self.counters.requests_failed += 1
            raise
        finally:
            stream.queues.pop(rid, None)
            self.running.pop(rid, None)
            self.outstanding[replica] -= 1
            self.counters.generated_tokens += produced
            if finish_reason is None:  # cancelled, timed out or failed: free the engine
                actor.abort.remote(rid)
                self.counters.requests_aborted += 1
            elif finish_reason == "abort":
                self.counters.requests_aborted += 1
            else:
                self.counters.requests_finished += 1

    def abort(self, request_id: str) -> bool:
        replica = self.running.get(request_id)
        if replica is None:
            return False
        self.actors[replica].abort.remote(request_id)
        return True

    def _pick_replica(self) -> int:
        """Fewest outstanding requests; ties rotate so idle replicas share the work."""
        n = len(self.outstanding)
        order = [(self._next + i) % n for i in range(n)]
        best = min(order, key=lambda i: self.outstanding[i])
        self._next = (best + 1) % n
        return best

    # ---- introspection and lifecycle ----------------------------------------------------------

    def model_info(self) -> pb.ModelInfo:
        info = self.deployment.target_infos[0]
        return pb.ModelInfo(
            model=self.config.models.target,
            path=info.path,
            max_model_len=info.max_model_len,
            vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids,
            has_chat_template=self.tokenizer.chat_template is not None,
            max_tokens_limit=self.config.server.max_tokens,
            replicas=len(self.actors),
        )

    async def stats(self) -> pb.Stats:
        replicas = await asyncio.gather(*(a.stats.remote() for a in self.actors))
        drafters = DrafterFigures.of(replicas)
        c = self.counters
        return pb.Stats(
            speculation=c.speculation.to_proto(),
            drafter_rtt_mean_s=drafters.rtt_mean_s,
            drafter_rtt_p50_s=drafters.rtt_p50_s,
            target_step_mean_s=ratio(
                sum(r.engine.step_s for r in replicas), sum(r.engine.steps for r in replicas)
            ),
            drafter_failures=drafters.failures,
            drafters_down=drafters.drafters_down,
            breakdown=Breakdown.of(replicas, c.delivery).to_proto(),
            drafters=await self._drafter_stats(),
            requests_in_flight=len(self.running),
            requests_total=c.requests_total,
            requests_finished=c.requests_finished,
            requests_aborted=c.requests_aborted,
            requests_failed=c.requests_failed,
            requests_rejected=c.requests_rejected,
            prompt_tokens=c.prompt_tokens,
            generated_tokens=c.generated_tokens,
            uptime_s=time.monotonic() - c.started,
            replicas=[
                pb.ReplicaStats(
                    replica_id=r.replica_id,
                    node_id=info.node_id,
                    outstanding=self.outstanding[i],
                    engine_unfinished=r.engine_unfinished,
                    requests_served=r.requests_served,
                    generated_tokens=r.generated_tokens,
                )
                for i, (r, info) in enumerate(
                    zip(replicas, self.deployment.target_infos, strict=True)
                )
            ],
        )

    async def _drafter_stats(self) -> list[pb.DrafterStats]:
        if self.deployment.drafters is None:
            return []
        out = []
        actors = self.deployment.drafters.actors
        for actor, info in zip(actors, self.deployment.drafter_infos, strict=True):
            try:  # a drafter being restarted has no figures; it is not an error to ask
                load = await asyncio.wait_for(actor.stats.remote(), timeout=1.0)
            except Exception:
                load = DrafterLoad(0, 0)
            out.append(
                pb.DrafterStats(
                    replica_id=info.replica_id,
                    node_id=info.node_id,
                    requests=load.requests,
                    mirror_hints_used=load.mirror_hints_used,
                )
            )
        return out

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests and wait up to timeout_s for running ones; returns those left."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self.running)

    def shutdown(self) -> None:
        self.deployment.shutdown()
