"""The coordinator: admits requests, routes them to target replicas, streams results back.

It runs in the front-door process (the gRPC server, or a Ray Serve replica) as a Ray driver. Each
request goes to the replica with the fewest outstanding requests; a request that is cancelled,
times out or is aborted is aborted in its replica's engine too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from tandem.cluster.config import ConfigError, TandemConfig
from tandem.cluster.drafter import DrafterReplica
from tandem.cluster.metrics import Metrics
from tandem.cluster.placement import Pool, cluster_nodes, place_pool, plan, request_for
from tandem.cluster.plan import pool_requests
from tandem.cluster.requests import Limits, PreparedRequest, RequestError, prepare
from tandem.cluster.target import TargetReplica
from tandem.models import check_same_vocabulary, derive_draft, resolve_model
from tandem.protos import tandem_pb2 as pb
from tandem.speculation.easyspec import make_groups


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
        )
        self.outstanding = [0] * len(pool.actors)
        self.running: dict[str, int] = {}  # request id -> replica index
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
            )
            pools.append(pool)
            infos = ray.get([actor.info.remote() for actor in pool.actors])
        except Exception:
            for placed in pools:
                placed.destroy()
            raise
        return cls(config, pool, infos, drafters, drafter_infos)

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
        actor = self.pool.actors[replica]
        rid = prepared.request_id
        self.running[rid] = replica
        self.outstanding[replica] += 1
        self.counters.requests_total += 1
        self.counters.prompt_tokens += len(prepared.prompt_token_ids)
        start = time.monotonic()
        first = last = start
        produced = 0
        finish_reason = None
        stream = actor.generate.remote(
            rid,
            prepared.prompt_token_ids,
            prepared.sampling,
            prepared.mode,
            prepared.k,
            prepared.pipelined,
        )
        try:
            async for ref in stream:
                step = await ref
                now = time.monotonic()
                if step["token_ids"]:
                    if produced == 0:
                        first = now
                    last = now
                    produced += len(step["token_ids"])
                finish_reason = step["finish_reason"]
                chunk = Chunk(rid, step["token_ids"], step["text"], finish_reason)
                if finish_reason is not None:
                    chunk.prompt_tokens = len(prepared.prompt_token_ids)
                    chunk.completion_tokens = produced
                    chunk.time_to_first_token_s = first - start
                    chunk.time_per_output_token_s = (last - first) / max(produced - 1, 1)
                    chunk.total_s = now - start
                    chunk.speculation = step["speculation"]
                    self._count_speculation(chunk.speculation)
                    if self.metrics is not None:
                        self.metrics.observe(chunk)
                yield chunk
        except ray.exceptions.RayActorError as exc:
            self.counters.requests_failed += 1
            raise RequestError("UNAVAILABLE", f"target replica {replica} died: {exc}") from None
        except Exception:
            self.counters.requests_failed += 1
            raise
        finally:
            self.running.pop(rid, None)
            self.outstanding[replica] -= 1
            self.counters.generated_tokens += produced
            if finish_reason is None:  # cancelled, timed out or failed: free the engine
                actor.abort.remote(rid)
                ray.cancel(stream)
                self.counters.requests_aborted += 1
            elif finish_reason == "abort":
                self.counters.requests_aborted += 1
            else:
                self.counters.requests_finished += 1

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
        replica = self.running.get(request_id)
        if replica is None:
            return False
        self.pool.actors[replica].abort.remote(request_id)
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
        replica_stats = await asyncio.gather(*(a.stats.remote() for a in self.pool.actors))
        c = self.counters
        return pb.Stats(
            **speculation_stats(c, replica_stats),
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
                    replica_id=s["replica_id"],
                    node_id=info["node_id"],
                    outstanding=self.outstanding[i],
                    engine_unfinished=s["engine_unfinished"],
                    requests_served=s["requests_served"],
                    generated_tokens=s["generated_tokens"],
                )
                for i, (s, info) in enumerate(zip(replica_stats, self.infos, strict=True))
            ],
        )

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
