"""The coordinator: admits requests, routes them to target replicas, streams results back.

It runs in the front-door process (the gRPC server, or a Ray Serve replica) as a Ray driver,
over a deployment that tandem.cluster.control.bootstrap brought up. Each request goes to the replica
with the fewest outstanding requests (among those up) under an engine-level id of its own, so a
late abort of an earlier request with the same client id never reaches it; a request that is
cancelled, times out or is aborted is aborted in its replica's engine too. Outputs come back on
one socket per replica (`ReplicaStream`), one batch per engine step, and are handed to each
request's own queue. A replica that dies fails the requests that had streamed from it and
retries on another those that had not; it is routed around until Ray has restarted it. Prompts
are tokenized on threads of their own, off the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ray

from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.control import bootstrap
from tandem.cluster.control.bootstrap import Deployment
from tandem.cluster.frontdoor.requests import Limits, max_prompt_chars, prepare
from tandem.cluster.telemetry.figures import (
    Breakdown,
    Counters,
    DeliveryTimes,
    DrafterFigures,
    DrafterLoad,
    ReplicaFigures,
    RequestFigures,
    ratio,
)
from tandem.cluster.transport.messages import OutputBatch, PreparedRequest, RequestError, StepOutput
from tandem.cluster.transport.output_channel import OutputInbox
from tandem.cluster.transport.sockets import Endpoint
from tandem.protos import tandem_pb2 as pb

log = logging.getLogger("tandem.coordinator")
T = TypeVar("T")

# Codes of refusals a replica may still raise for the client's input (vLLM's own checks).
CLIENT_ERRORS = ("INVALID_ARGUMENT", "OUT_OF_RANGE")
# A request whose replica died before it streamed a token is retried on another this often.
REPLICA_RETRIES = 1
REPLICA_STATS_TIMEOUT_S = 10.0


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
    logprobs: list | None = (
        None  # per token, with sampling.logprobs (tandem.plugins.vllm_io.positions)
    )
    prompt_logprobs: list | None = None  # per prompt token after the first, on the first chunk


@dataclass
class _Run:
    """A request while it runs: where, under which engine-level id, and what it streamed."""

    prepared: PreparedRequest
    start: float
    replica: int = 0
    submission: str | None = None  # the engine-level id of the current attempt
    attempts: int = 0
    produced: int = 0
    first: float = 0.0  # when the first and the last token came
    last: float = 0.0
    finish_reason: str | None = None

    def chunk(self, step: StepOutput, now: float) -> Chunk:
        """The chunk of one replica step; the last one also carries the finish fields."""
        prepared = self.prepared
        if step.token_ids:
            if self.produced == 0:
                self.first = now
            self.last = now
            self.produced += len(step.token_ids)
        self.finish_reason = step.finish_reason
        chunk = Chunk(
            prepared.request_id,
            step.token_ids,
            step.text,
            self.finish_reason,
            logprobs=step.logprobs,
            prompt_logprobs=step.prompt_logprobs,
        )
        if self.finish_reason is not None:
            first, last = (self.first, self.last) if self.produced else (self.start, self.start)
            chunk.prompt_tokens = len(prepared.prompt_token_ids)
            chunk.completion_tokens = self.produced
            chunk.time_to_first_token_s = first - self.start
            chunk.time_per_output_token_s = (last - first) / max(self.produced - 1, 1)
            chunk.total_s = now - self.start
            chunk.figures = step.figures
        return chunk


class ReplicaStream:
    """One target replica's outputs for this coordinator: a subscription (a socket of this
    coordinator's that the replica's engine thread sends to,
    tandem.cluster.transport.output_channel), read by a task that hands each request's outputs to
    its queue (with when the batch arrived), and the replica's Ray stream `outputs`, which yields
    nothing but breaks when the replica dies: then every waiting request gets the error, and the
    next request subscribes anew."""

    def __init__(self, actor: Any, counters: Counters) -> None:
        self.actor = actor
        self.counters = counters
        self.queues: dict[str, asyncio.Queue] = {}
        self.subscriber = ""
        self.endpoint: Endpoint | None = None  # where the replica sends them
        self._task: asyncio.Task | None = None

    def open(self, request_id: str) -> asyncio.Queue:
        """A queue for a request's outputs; subscribes if nobody reads on this loop."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            inbox = OutputInbox(ray.util.get_node_ip_address())
            self.subscriber, self.endpoint = uuid.uuid4().hex, inbox.endpoint
            self._task = loop.create_task(self._read(inbox, self.subscriber))
        queue = self.queues[request_id] = asyncio.Queue()
        return queue

    async def _read(self, inbox: OutputInbox, subscriber: str) -> None:
        stream = self.actor.outputs.remote(subscriber)
        watching = asyncio.ensure_future(self._watch(stream))
        receiving = asyncio.ensure_future(self._receive(inbox))
        try:  # whichever ends first ends the subscription: a dead replica, a broken socket
            done, _ = await asyncio.wait((watching, receiving), return_when=asyncio.FIRST_COMPLETED)
            error = done.pop().exception() or RuntimeError("the replica closed its output stream")
        finally:
            ray.cancel(stream)
            watching.cancel()
            receiving.cancel()
            inbox.close()
        for queue in self.queues.values():  # fail what waits on the subscription
            queue.put_nowait(error)

    @staticmethod
    async def _watch(stream: Any) -> None:
        async for ref in stream:  # nothing comes but, when the replica dies, its error
            await ref

    async def _receive(self, inbox: OutputInbox) -> None:
        while True:
            batch: OutputBatch = await inbox.receive()
            arrived = time.perf_counter()
            delay = max(0.0, time.time() - batch.sent_at)
            self.counters.delivery += DeliveryTimes(batches=1, stream_s=delay)
            for step in batch.outputs:
                queue = self.queues.get(step.request_id)
                if queue is not None:
                    queue.put_nowait((step, arrived))


class Coordinator:
    def __init__(self, config: TandemConfig, deployment: Deployment) -> None:
        from transformers import AutoTokenizer

        self.config = config
        self.deployment = deployment
        self.actors = deployment.targets.actors
        info = deployment.target_infos[0]
        # This node's own copy (info.path is a folder on the target's node, maybe another pod).
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.models.store().resolve(config.models.target)
        )
        spec = config.speculation
        self.limits = Limits(
            max_model_len=info.max_model_len,
            vocab_size=info.vocab_size,
            max_tokens=config.server.max_tokens,
            default_max_tokens=config.server.default_max_tokens,
            modes=deployment.modes(),
            default_mode=spec.default_mode if spec.enabled else "off",
            num_speculative_tokens=spec.num_speculative_tokens,
            min_p=not (spec.enabled and spec.sampler.kind == "vllm"),
            pipelined=spec.pipeline.enabled,
            max_prompt_chars=max_prompt_chars(self.tokenizer, info.max_model_len),
            speculative_engine=spec.enabled,
        )
        # Tokenizing and chat rendering take seconds on large inputs: never on the event loop.
        # Each thread has its own tokenizer (a fast tokenizer must not be shared by threads).
        self._tokenizers = threading.local()
        self._tokenizing = ThreadPoolExecutor(
            config.server.tokenizer_threads, thread_name_prefix="tandem-tokenize"
        )
        self.admitting = 0  # requests being prepared (they hold an in-flight slot)
        self.outstanding = [0] * len(self.actors)
        self.running: dict[str, _Run] = {}  # by the client's request id
        self.down: set[int] = set()  # replicas that died and are not back yet (Ray restarts)
        self._watches: set[asyncio.Task] = set()
        self._submissions = itertools.count()
        self.counters = Counters()
        self.draining = False
        # Called with the last chunk of every request (a front door's metrics observe it).
        self.on_finished: list[Callable[[Chunk], None]] = []
        self._next = 0
        self.streams = [ReplicaStream(a, self.counters) for a in self.actors]

    @classmethod
    def start(cls, config: TandemConfig) -> Coordinator:
        return cls(config, bootstrap.start(config))

    # ---- requests -----------------------------------------------------------------------------

    def reject(self, exc: RequestError) -> RequestError:
        """Count a refusal and log it in one line (no traceback: the client was told why)."""
        self.counters.requests_rejected += 1
        log.info("refused (%s): %s", exc.code, exc)
        return exc

    async def admit(self, request: pb.GenerateRequest) -> PreparedRequest:
        """Validate and admit a request, or raise RequestError (counted as rejected). The
        prompt is tokenized on the tokenizer threads (server.tokenizer_threads)."""
        try:
            if self.draining:
                raise RequestError("UNAVAILABLE", "the server is shutting down; retry elsewhere")
            inflight = len(self.running) + self.admitting
            if inflight >= self.config.server.max_inflight:
                raise RequestError(
                    "RESOURCE_EXHAUSTED",
                    f"{inflight} requests in flight, the limit (server.max_inflight); retry later",
                )
            self.admitting += 1
            try:
                prepared = await self.with_tokenizer(
                    functools.partial(prepare, request, limits=self.limits)
                )
            finally:
                self.admitting -= 1
            if prepared.request_id in self.running:
                raise RequestError(
                    "ALREADY_EXISTS", f"request_id: {prepared.request_id!r} is already running"
                )
        except RequestError as exc:
            raise self.reject(exc) from None
        return prepared

    async def with_tokenizer(self, work: Callable[..., T]) -> T:
        """`work(tokenizer=...)` on a tokenizer thread (server.tokenizer_threads), with that
        thread's own tokenizer: tokenizing a large prompt takes seconds, never on the loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenizing, functools.partial(self._on_thread, work)
        )

    def _on_thread(self, work: Callable[..., T]) -> T:
        tokenizer = getattr(self._tokenizers, "tokenizer", None)
        if tokenizer is None:  # a fast tokenizer must not be shared by threads
            tokenizer = self._tokenizers.tokenizer = copy.deepcopy(self.tokenizer)
        return work(tokenizer=tokenizer)

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        """Stream one admitted request; leaving the iteration early aborts it in the engine.
        If its replica dies before it streamed anything, it is retried on another replica."""
        rid = prepared.request_id
        run = _Run(prepared, start=time.monotonic())
        self.running[rid] = run
        self.counters.requests_total += 1
        self.counters.prompt_tokens += len(prepared.prompt_token_ids)
        outcome = "aborted"  # unless it finishes or fails: cancelled, timed out
        try:
            while True:
                try:
                    async for chunk in self._attempt(run):
                        yield chunk
                except ray.exceptions.RayActorError:
                    self._lost(run.replica)
                    if run.produced or run.attempts > REPLICA_RETRIES:
                        raise RequestError(
                            "UNAVAILABLE", f"request {rid}: its target replica went away; retry"
                        ) from None
                    log.warning("request %s: replica %d died; retrying it", rid, run.replica)
                    continue
                outcome = "aborted" if run.finish_reason == "abort" else "finished"
                return
        except RequestError as exc:
            outcome = "rejected" if exc.code in CLIENT_ERRORS else "failed"
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self.running.pop(rid, None)
            self.counters.generated_tokens += run.produced
            if outcome == "aborted":
                self.counters.requests_aborted += 1
            elif outcome == "finished":
                self.counters.requests_finished += 1
            elif outcome == "failed":
                self.counters.requests_failed += 1
            else:
                self.counters.requests_rejected += 1
            reason = run.finish_reason or "abort"
            by_reason = self.counters.finished_by_reason
            by_reason[reason] = by_reason.get(reason, 0) + 1

    async def _attempt(self, run: _Run) -> AsyncIterator[Chunk]:
        """Run the request once on the least loaded replica, under a new engine-level id; its
        outputs come on the replica's stream."""
        run.replica = replica = self._pick_replica()
        run.submission = submission = f"{run.prepared.request_id}#{next(self._submissions)}"
        run.attempts += 1
        actor = self.actors[replica]
        stream = self.streams[replica]
        queue = stream.open(submission)
        self.outstanding[replica] += 1
        try:
            await actor.submit.remote(
                replace(run.prepared, request_id=submission), stream.subscriber, stream.endpoint
            )
            while run.finish_reason is None:
                item = await queue.get()
                if isinstance(item, BaseException):  # the stream broke: the replica died
                    raise item
                step, arrived = item
                waited = time.perf_counter() - arrived
                self.counters.delivery += DeliveryTimes(chunks=1, coordinator_s=waited)
                if step.error is not None:
                    raise step.error
                chunk = run.chunk(step, time.monotonic())
                if chunk.finish_reason is not None:
                    self.counters.add(chunk.figures)
                    for observe in self.on_finished:
                        observe(chunk)
                yield chunk
        except ray.exceptions.RayTaskError as exc:  # a refusal raised in the replica
            if isinstance(exc.cause, RequestError):
                raise exc.cause from None
            raise
        finally:
            stream.queues.pop(submission, None)
            self.outstanding[replica] -= 1
            if run.finish_reason is None:  # cancelled, timed out or failed: free the engine
                actor.abort.remote(submission)

    def abort(self, request_id: str) -> bool:
        run = self.running.get(request_id)
        if run is None or run.submission is None:
            return False
        self.actors[run.replica].abort.remote(run.submission)
        return True

    def _pick_replica(self) -> int:
        """Fewest outstanding requests among the replicas up (all of them if none is); ties
        rotate so idle replicas share the work."""
        n = len(self.outstanding)
        order = [(self._next + i) % n for i in range(n)]
        order = [i for i in order if i not in self.down] or order
        best = min(order, key=lambda i: self.outstanding[i])
        self._next = (best + 1) % n
        return best

    def _lost(self, replica: int) -> None:
        """A replica died: route around it until it answers again (Ray restarts it)."""
        if replica in self.down:
            return
        self.down.add(replica)
        task = asyncio.get_running_loop().create_task(self._await_restart(replica))
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _await_restart(self, replica: int) -> None:
        actor = self.actors[replica]
        while True:
            try:  # Ray holds the call until the restarted actor is ready
                await actor.stats.remote()
                break
            except ray.exceptions.RayActorError:
                await asyncio.sleep(1.0)
        self.down.discard(replica)
        log.info("target replica %d is back", replica)

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
        figures = await self._replica_stats()
        replicas = [r for r in figures if r is not None]
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
            drafter_timeouts=drafters.timeouts,
            drafters_down=drafters.drafters_down,
            feature_bytes=drafters.feature_bytes,
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
                    replica_id=info.replica_id,
                    node_id=info.node_id,
                    outstanding=self.outstanding[i],
                    engine_unfinished=r.engine_unfinished if r else 0,
                    requests_served=r.requests_served if r else 0,
                    generated_tokens=r.generated_tokens if r else 0,
                    up=r is not None,
                    engine_cpus=info.engine_cpus,
                )
                for i, (r, info) in enumerate(
                    zip(figures, self.deployment.target_infos, strict=True)
                )
            ],
        )

    async def _replica_stats(self) -> list[ReplicaFigures | None]:
        """Each target replica's figures; None for one that is down (being restarted)."""

        async def one(replica: int, actor: Any) -> ReplicaFigures | None:
            if replica in self.down:
                return None
            try:
                return await asyncio.wait_for(actor.stats.remote(), REPLICA_STATS_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                self._lost(replica)
            except TimeoutError:
                pass
            return None

        return await asyncio.gather(*(one(i, a) for i, a in enumerate(self.actors)))

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
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
        self.deployment.shutdown()
