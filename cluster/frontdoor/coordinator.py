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
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import ray

from tandem.cluster.actors.drafter_actor import DrafterInfo
from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.control import bootstrap
from tandem.cluster.control.bootstrap import Deployment
from tandem.cluster.frontdoor.requests import Limits, max_prompt_chars, prepare
from tandem.cluster.frontdoor.subscription import ReplicaStream
from tandem.cluster.telemetry.figures import (
    Counters,
    DeliveryTimes,
    DrafterLoad,
    ReplicaFigures,
    RequestFigures,
)
from tandem.cluster.telemetry.stats_message import stats_message
from tandem.cluster.transport.messages import PreparedRequest, RequestError, StepOutput
from tandem.protos import tandem_pb2 as pb

log = logging.getLogger("tandem.coordinator")
T = TypeVar("T")

# Codes of refusals a replica may still raise for the client's input (vLLM's own checks).
CLIENT_ERRORS = ("INVALID_ARGUMENT", "OUT_OF_RANGE")
# A request whose replica died is moved to another this often: retried if it had streamed
# nothing, continued from its delivered tokens otherwise (_Run.submitted).
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
    delivered: list[int] = field(default_factory=list)  # the tokens streamed so far
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
            self.delivered += step.token_ids
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

    @property
    def produced(self) -> int:
        return len(self.delivered)

    def resumable(self) -> bool:
        """Whether another replica can take the request over: always before its first token;
        after it, unless a grammar constrains it (vLLM would start the grammar again mid-way)."""
        return not self.delivered or self.prepared.sampling.get("structured_outputs") is None

    def submitted(self) -> PreparedRequest:
        """What the next attempt submits: the request itself, or, once tokens were delivered,
        its continuation (the prompt followed by them, the limits less them), as the engine loop
        resumes a request after a failed step. Greedy output goes on exactly as it would have; a
        seeded request's random stream starts again (its output keeps the distribution)."""
        if not self.delivered:
            return self.prepared
        done = len(self.delivered)
        sampling = dict(self.prepared.sampling)
        if sampling.get("max_tokens") is not None:
            sampling["max_tokens"] -= done
        if sampling.get("min_tokens"):
            sampling["min_tokens"] = max(0, sampling["min_tokens"] - done)
        sampling.pop("prompt_logprobs", None)  # the first chunk delivered them
        prompt = self.prepared.prompt_token_ids + self.delivered
        return replace(self.prepared, prompt_token_ids=prompt, sampling=sampling)


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
                    if run.attempts > REPLICA_RETRIES or not run.resumable():
                        raise RequestError(
                            "UNAVAILABLE", f"request {rid}: its target replica went away; retry"
                        ) from None
                    log.warning(
                        "request %s: replica %d died after %d tokens; moving it to another",
                        rid,
                        run.replica,
                        run.produced,
                    )
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
                replace(run.submitted(), request_id=submission),
                stream.subscriber,
                stream.endpoint,
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
        targets = zip(self.deployment.target_infos, self.outstanding, figures, strict=True)
        return stats_message(
            self.counters, len(self.running), list(targets), await self._drafter_loads()
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

    async def _drafter_loads(self) -> list[tuple[DrafterInfo, DrafterLoad]]:
        if self.deployment.drafters is None:
            return []
        out = []
        actors = self.deployment.drafters.actors
        for actor, info in zip(actors, self.deployment.drafter_infos, strict=True):
            try:  # a drafter being restarted has no figures; it is not an error to ask
                load = await asyncio.wait_for(actor.stats.remote(), timeout=1.0)
            except Exception:
                load = DrafterLoad(0, 0)
            out.append((info, load))
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
