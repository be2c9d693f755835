"""The coordinator: admits requests, routes them to target replicas, streams results back.

It runs in the front-door process (the gRPC server, or a Ray Serve replica) as a Ray driver. Each
request goes to the replica with the fewest outstanding requests; a request that is cancelled,
times out or is aborted is aborted in its replica's engine too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from tandem.cluster.config import ConfigError, TandemConfig
from tandem.cluster.drafter import DrafterReplica
from tandem.cluster.metrics import Metrics
from tandem.cluster.placement import Pool, cluster_nodes, place_pool, plan, request_for
from tandem.cluster.plan import pool_requests
from tandem.cluster.requests import (
    Limits,
    PreparedRequest,
    RequestError,
    max_prompt_chars,
    prepare,
)
from tandem.cluster.target import TargetReplica
from tandem.models import check_same_vocabulary, derive_draft, resolve_model
from tandem.protos import tandem_pb2 as pb
from tandem.speculation.easyspec import make_groups

log = logging.getLogger("tandem.coordinator")

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
    speculation: dict[str, Any] | None = None  # the request's figures, on the last chunk


@dataclass
class Counters:
    requests_total: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    requests_failed: int = 0
    requests_rejected: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    target_steps: int = 0
    drafts: int = 0  # verification rounds that carried a draft
    draft_tokens: int = 0
    accepted_tokens: int = 0
    cache_hits: int = 0  # drafts served from the speculation cache
    cache_misses: int = 0  # pipelined steps drafted just in time
    accepted_per_pos: list[int] = field(default_factory=list)  # index: position in the draft
    started: float = field(default_factory=time.monotonic)


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

    def chunk(self, step: dict[str, Any], now: float) -> Chunk:
        """The chunk of one replica step; the last one also carries the finish fields."""
        prepared = self.prepared
        if step["token_ids"]:
            if self.produced == 0:
                self.first = now
            self.last = now
            self.produced += len(step["token_ids"])
        self.finish_reason = step["finish_reason"]
        chunk = Chunk(prepared.request_id, step["token_ids"], step["text"], self.finish_reason)
        if self.finish_reason is not None:
            first, last = (self.first, self.last) if self.produced else (self.start, self.start)
            chunk.prompt_tokens = len(prepared.prompt_token_ids)
            chunk.completion_tokens = self.produced
            chunk.time_to_first_token_s = first - self.start
            chunk.time_per_output_token_s = (last - first) / max(self.produced - 1, 1)
            chunk.total_s = now - self.start
            chunk.speculation = step["speculation"]
        return chunk


class Coordinator:
    def __init__(
        self,
        config: TandemConfig,
        pool: Pool,
        infos: list[dict[str, Any]],
        drafters: Pool | None = None,
        drafter_infos: list[dict[str, Any]] = (),
    ) -> None:
        from transformers import AutoTokenizer

        self.config = config
        self.pool = pool
        self.infos = infos
        self.drafters = drafters
        self.drafter_infos = list(drafter_infos)
        self.model_path = infos[0]["path"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.limits = Limits(
            max_model_len=infos[0]["max_model_len"],
            vocab_size=infos[0]["vocab_size"],
            max_tokens=config.server.max_tokens,
            default_max_tokens=config.server.default_max_tokens,
            speculation_modes=tuple(config.speculation.modes()),
            default_mode=config.speculation.default_mode if config.speculation.enabled else "off",
            max_speculative_tokens=config.speculation.num_speculative_tokens,
            speculate_sampled=config.speculation.sampled_requests,
            pipelined=config.speculation.pipeline.enabled,
            max_prompt_chars=max_prompt_chars(self.tokenizer, infos[0]["max_model_len"]),
        )
        # Tokenizing and chat rendering take seconds on large inputs: never on the event loop.
        # Each thread has its own tokenizer (a fast tokenizer must not be shared by threads).
        self._tokenizers = threading.local()
        self._tokenizing = ThreadPoolExecutor(
            config.server.tokenizer_threads, thread_name_prefix="tandem-tokenize"
        )
        self.admitting = 0  # requests being prepared (they hold an in-flight slot)
        self.outstanding = [0] * len(pool.actors)
        self.running: dict[str, _Run] = {}  # by the client's request id
        self.down: set[int] = set()  # replicas that died and are not back yet (Ray restarts)
        self._watches: set[asyncio.Task] = set()
        self._submissions = itertools.count()
        self.counters = Counters()
        self.draining = False
        self.metrics: Metrics | None = None  # set by a front door that exports metrics
        self._next = 0

    @classmethod
    def start(cls, config: TandemConfig) -> Coordinator:
        """Place the drafter and target pools on the connected Ray cluster; wait until ready."""
        model_path = resolve_model(config.models.target, config.models.cache_dir())
        plan(pool_requests(config), cluster_nodes())  # refuse what cannot fit, before reserving
        spec = config.speculation
        drafters = speculation = None
        drafter_infos: list[dict[str, Any]] = []
        pools: list[Pool] = []
        try:
            if spec.enabled:
                drafters = start_drafters(config, model_path)
                pools.append(drafters)
                drafter_infos = ray.get([a.info.remote() for a in drafters.actors])
                speculation = {
                    "num_speculative_tokens": spec.num_speculative_tokens,
                    "timeout_s": spec.step_timeout_ms / 1000,
                    "sampled_requests": spec.sampled_requests,
                    "cache_outcomes": spec.pipeline.outcomes if spec.pipeline.enabled else 0,
                    "cache_fanout": spec.pipeline.fanout,
                    "candidates": spec.target_candidates,
                    "mirror": spec.mirror.model_dump() if spec.mirror.enabled else None,
                    "draft_length": (
                        spec.draft_length.full_until_batch,
                        spec.draft_length.off_above_batch,
                    ),
                }
            target = config.target
            pool = place_pool(
                request_for("target", target),
                TargetReplica,
                target.env,
                lambda i: (
                    f"target-{i}",
                    str(model_path),
                    target.engine_args,
                    speculation,
                    drafters.actors if drafters else [],
                ),
                max_restarts=target.max_restarts,
            )
            pools.append(pool)
            infos = ray.get([actor.info.remote() for actor in pool.actors])
        except Exception:
            for placed in pools:
                placed.destroy()
            raise
        return cls(config, pool, infos, drafters, drafter_infos)

    # ---- requests -----------------------------------------------------------------------------

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
                work = functools.partial(self._prepare, request)
                prepared = await asyncio.get_running_loop().run_in_executor(self._tokenizing, work)
            finally:
                self.admitting -= 1
            if prepared.request_id in self.running:
                raise RequestError(
                    "ALREADY_EXISTS", f"request_id: {prepared.request_id!r} is already running"
                )
        except RequestError:
            self.counters.requests_rejected += 1
            raise
        return prepared

    def _prepare(self, request: pb.GenerateRequest) -> PreparedRequest:
        """On a tokenizer thread: the request checked and tokenized with its own tokenizer."""
        tokenizer = getattr(self._tokenizers, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._tokenizers.tokenizer = copy.deepcopy(self.tokenizer)
        return prepare(request, tokenizer, self.limits)

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

    async def _attempt(self, run: _Run) -> AsyncIterator[Chunk]:
        """Run the request once on the least loaded replica, under a new engine-level id."""
        prepared = run.prepared
        run.replica = replica = self._pick_replica()
        run.submission = f"{prepared.request_id}#{next(self._submissions)}"
        run.attempts += 1
        actor = self.pool.actors[replica]
        self.outstanding[replica] += 1
        stream = actor.generate.remote(
            run.submission,
            prepared.prompt_token_ids,
            prepared.sampling,
            prepared.mode,
            prepared.k,
            prepared.pipelined,
        )
        try:
            async for ref in stream:
                chunk = run.chunk(await ref, time.monotonic())
                if chunk.finish_reason is not None:
                    self._observe(chunk)
                yield chunk
        except ray.exceptions.RayTaskError as exc:  # a refusal raised in the replica
            if isinstance(exc.cause, RequestError):
                raise exc.cause from None
            raise
        finally:
            self.outstanding[replica] -= 1
            if run.finish_reason is None:  # cancelled, timed out or failed: free the engine
                actor.abort.remote(run.submission)
                ray.cancel(stream)

    def _observe(self, chunk: Chunk) -> None:
        """Count a finished request's figures."""
        self._count_speculation(chunk.speculation)
        if self.metrics is not None:
            self.metrics.observe(chunk)

    def _count_speculation(self, figures: dict[str, Any]) -> None:
        self.counters.target_steps += figures["target_steps"]
        self.counters.draft_tokens += figures["draft_tokens"]
        self.counters.accepted_tokens += figures["accepted_tokens"]
        self.counters.cache_hits += figures["cache_hits"]
        self.counters.cache_misses += figures["cache_misses"]
        self.counters.drafts += figures["drafts"]
        per_pos = self.counters.accepted_per_pos
        for position, count in enumerate(figures["accepted_per_pos"]):
            if position == len(per_pos):
                per_pos.append(0)
            per_pos[position] += count

    def abort(self, request_id: str) -> bool:
        run = self.running.get(request_id)
        if run is None or run.submission is None:
            return False
        self.pool.actors[run.replica].abort.remote(run.submission)
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
        actor = self.pool.actors[replica]
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
        info = self.infos[0]
        return pb.ModelInfo(
            model=self.config.models.target,
            path=info["path"],
            max_model_len=info["max_model_len"],
            vocab_size=info["vocab_size"],
            eos_token_ids=info["eos_token_ids"],
            has_chat_template=self.tokenizer.chat_template is not None,
            max_tokens_limit=self.config.server.max_tokens,
            replicas=len(self.pool.actors),
        )

    async def stats(self) -> pb.Stats:
        replica_stats = await self._replica_stats()
        c = self.counters
        return pb.Stats(
            **speculation_stats(c, [s for s in replica_stats if s is not None]),
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
                    replica_id=info["replica_id"],
                    node_id=info["node_id"],
                    outstanding=self.outstanding[i],
                    engine_unfinished=s["engine_unfinished"] if s else 0,
                    requests_served=s["requests_served"] if s else 0,
                    generated_tokens=s["generated_tokens"] if s else 0,
                    up=s is not None,
                )
                for i, (s, info) in enumerate(zip(replica_stats, self.infos, strict=True))
            ],
        )

    async def _replica_stats(self) -> list[dict[str, Any] | None]:
        """Each target replica's figures; None for one that is down (being restarted)."""

        async def one(replica: int, actor: Any) -> dict[str, Any] | None:
            if replica in self.down:
                return None
            try:
                return await asyncio.wait_for(actor.stats.remote(), REPLICA_STATS_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                self._lost(replica)
            except TimeoutError:
                pass
            return None

        return await asyncio.gather(*(one(i, a) for i, a in enumerate(self.pool.actors)))

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests and wait up to timeout_s for running ones; returns those left."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self.running)

    async def _drafter_stats(self) -> list[pb.DrafterStats]:
        if self.drafters is None:
            return []
        out = []
        for actor, info in zip(self.drafters.actors, self.drafter_infos, strict=True):
            try:  # a drafter being restarted has no figures; it is not an error to ask
                stats = await asyncio.wait_for(actor.stats.remote(), timeout=1.0)
            except Exception:
                stats = {"requests": 0, "mirror_hints_used": 0}
            out.append(
                pb.DrafterStats(
                    replica_id=info["replica_id"],
                    node_id=info["node_id"],
                    requests=stats["requests"],
                    mirror_hints_used=stats["mirror_hints_used"],
                )
            )
        return out

    def shutdown(self) -> None:
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):  # a dead replica has nothing left to shut down
            ray.get([a.shutdown.remote() for a in self.pool.actors], timeout=30)
        self.pool.destroy()
        if self.drafters is not None:
            self.drafters.destroy()


def start_drafters(config: TandemConfig, target_path) -> Pool:
    """The drafter pool, with its draft model checked against the target's vocabulary."""
    pool = config.speculation.drafters
    draft_path = None
    if pool.model is not None:
        draft_path = resolve_model(pool.model, config.models.cache_dir())
    elif pool.derive_layers > 0:
        draft_path = derive_draft(target_path, pool.derive_layers, config.models.cache_dir())
    if draft_path is not None:
        check_same_vocabulary(target_path, draft_path)
        _check_layer_groups(pool.layer_groups, draft_path)
    controlled = pool.controlled_acceptance
    settings = {
        "model_path": str(draft_path) if draft_path else None,
        "device": pool.device,
        "devices": pool.devices,
        "layer_groups": pool.layer_groups,
        "stop_below": pool.stop_below,
        "ngram_min": pool.ngram_min,
        "ngram_max": pool.ngram_max,
        "max_requests": pool.max_requests,
        "suffix": pool.suffix.model_dump(),
        "vocab_size": vocab_size(target_path),
        # Token Recycling keeps as many candidates per token as the target shares
        "recycle_top_k": max(1, config.speculation.target_candidates),
        "controlled": controlled.model_dump(mode="json") if controlled else None,
    }
    return place_pool(
        request_for("drafters", pool),
        DrafterReplica,
        pool.env,
        lambda i: (f"drafter-{i}", settings),
        max_restarts=pool.max_restarts,
        max_concurrency=2,  # Mirror-SD hints arrive while a pre-drafting call runs
    )


def vocab_size(model_path: Path) -> int:
    """The target's vocabulary size (the rows of the Token Recycling table)."""
    return int(json.loads((Path(model_path) / "config.json").read_text())["vocab_size"])


def _check_layer_groups(layer_groups: int | list[int], draft_path: Any) -> None:
    """Explicit group sizes must cover the draft's layers: refused here, not in a drafter actor
    that Ray would restart forever."""
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(draft_path).num_hidden_layers
    try:
        make_groups(layer_groups, layers)
    except ValueError as exc:
        raise ConfigError(f"speculation.drafters.layer_groups: {exc}") from None


def speculation_stats(counters: Counters, replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats fields on speculation: per-request figures summed by the coordinator, drafter
    health and round trips from the target replicas' sessions."""
    steps = sum(r["steps"] for r in replicas)
    sessions = [r["session"] for r in replicas if "session" in r]
    drafted_steps = sum(s["steps"] for s in sessions)
    rtt_total = sum(s["mean_rtt_s"] * s["steps"] for s in sessions)
    return {
        "speculation": pb.SpeculationStats(
            draft_tokens=counters.draft_tokens,
            accepted_tokens=counters.accepted_tokens,
            acceptance_rate=ratio(counters.accepted_tokens, counters.draft_tokens),
            mean_accepted_length=ratio(counters.generated_tokens, counters.target_steps),
            target_steps=counters.target_steps,
            cache_hits=counters.cache_hits,
            cache_misses=counters.cache_misses,
        ),
        "drafter_rtt_mean_s": ratio(rtt_total, drafted_steps),
        "drafter_rtt_p50_s": max((s["p50_rtt_s"] for s in sessions), default=0.0),
        "target_step_mean_s": ratio(sum(r["step_time_s"] for r in replicas), steps),
        "drafter_failures": sum(s["failures"] for s in sessions),
        "drafter_timeouts": sum(s["timeouts"] for s in sessions),
        "drafters_down": sum(s["drafters_down"] for s in sessions),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0
