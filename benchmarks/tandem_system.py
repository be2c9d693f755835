"""tandem through its real gRPC server: the way a user reaches it.

The bench starts `tandem serve` in a child process (its own embedded Ray cluster, target and
drafter actors) unless it is given the address of a running server. The tandem modes run
through that one server, chosen per request, except the drafters whose state spans requests
(systems.ISOLATED), which get a server each. Times are taken on the client side, so they include
everything a user pays for: gRPC, the coordinator, Ray, the drafters, the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from tandem.benchmarks.records import (
    ConcurrencyRun,
    GenerationParams,
    RequestRecord,
    Trace,
    concurrently,
)
from tandem.benchmarks.workload import Prompt


class TandemServer:
    """A tandem server the bench started (stopped on close), or one it was pointed at."""

    def __init__(
        self,
        config: dict[str, Any],
        address: str | None = None,
        command: Sequence[str] = ("tandem.cli",),
    ) -> None:
        """`command`: the module (and its arguments) that runs `serve` (ServiceProcess)."""
        from tandem.benchmarks.launcher import ServiceProcess
        from tandem.client import TandemClient

        self.config = config
        self.service = None
        if address is None:
            self.service = ServiceProcess(config, command=command)
            address = self.service.start()
        self.address = address
        self.client = TandemClient(address)
        self.model_info = self.client.model_info()

    def modes(self, candidates: Sequence[str]) -> set[str]:
        """The speculation modes the server accepts: each is tried with a 1-token request."""
        import grpc

        offered = set()
        for mode in candidates:
            try:
                self.client.generate([1], max_tokens=1, temperature=0.0, speculation=mode)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                continue
            offered.add(mode)
        return offered

    def info(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "started_by_bench": self.service is not None,
            "model_path": self.model_info.path,
            "replicas": self.model_info.replicas,
            "config": self.config if self.service is not None else None,
        }

    def drafter_link(self) -> dict[str, float] | None:
        """The emulated link the drafters sit behind (speculation.drafters.link), if any."""
        speculation = (self.config or {}).get("speculation") or {}
        return (speculation.get("drafters") or {}).get("link")

    def close(self) -> None:
        self.client.close()
        if self.service is not None:
            self.service.stop()
            self.service = None


class TandemSystem:
    """One speculation mode of a tandem server (mode "off": the target alone; None: the
    server's default mode, which is how a registered source outside tandem's Mode is asked)."""

    kind = "tandem gRPC"

    def __init__(
        self,
        name: str,
        mode: str | None,
        k: int,
        server: TandemServer,
        description: str = "",
        pipelined: bool = True,
    ) -> None:
        self.name = name
        self.mode = mode
        self.pipelined = pipelined
        self.speculative = mode != "off"
        self.num_speculative_tokens = k if self.speculative else 0
        self.server = server
        self.description = description

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "mode": self.mode,
            "pipelined": self.pipelined,
            # the emulated link its drafters sit behind (--drafter-link-ms), None: direct
            "drafter_link": self.server.drafter_link(),
            "server": self.server.info(),
        }

    def _request(self, params: GenerationParams) -> dict[str, Any]:
        request = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "seed": params.seed,
            "speculation": self.mode,
        }
        if self.speculative:
            request["num_speculative_tokens"] = self.num_speculative_tokens
            request["pipelined"] = self.pipelined
        return request

    def warmup(self, prompts: Sequence[Prompt], params: GenerationParams) -> None:
        for prompt in prompts:
            self.run(prompt, params)

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord:
        trace = Trace(prompt, time.perf_counter())
        last = None
        for chunk in self.server.client.stream(list(prompt.token_ids), **self._request(params)):
            _observe(trace, chunk)
            last = chunk
        return _record(trace, last, self.name)

    def run_concurrent(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> ConcurrencyRun:
        return asyncio.run(self._concurrent(prompts, concurrency, params))

    async def _concurrent(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> ConcurrencyRun:
        from tandem.client import AsyncTandemClient

        async with AsyncTandemClient(self.server.address) as client:

            async def one(prompt: Prompt) -> RequestRecord:
                trace = Trace(prompt, time.perf_counter())
                last = None
                async for chunk in client.stream(list(prompt.token_ids), **self._request(params)):
                    _observe(trace, chunk)
                    last = chunk
                return _record(trace, last, self.name)

            return await concurrently(self.name, prompts, concurrency, one)

    def breakdown(self) -> Any:
        """The server's serving breakdown so far (GetStats), summed over what ran on it: the
        bench takes the difference around each of this system's runs."""
        from tandem.cluster.telemetry.figures import Breakdown

        return Breakdown.from_proto(self.server.client.stats().breakdown)

    def close(self) -> None:
        """The shared server is closed by the builder, once."""


def _finish_reason(chunk: Any) -> str | None:
    """The stream's finish reason in vLLM's words (stop, length, abort); None while running."""
    from tandem.protos import tandem_pb2 as pb

    if chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return None
    return pb.FinishReason.Name(chunk.finish_reason).removeprefix("FINISH_REASON_").lower()


def _observe(trace: Trace, chunk: Any) -> None:
    now = time.perf_counter()
    trace.observe(chunk.token_ids, now)
    if (reason := _finish_reason(chunk)) is not None:
        trace.finish(reason, now)


def _record(trace: Trace, last: Any, system: str) -> RequestRecord:
    """The trace's record plus the server's draft figures from the stream's last message."""
    record = trace.record(system)
    record.drafts = None  # the server reports draft and accepted tokens, not drafting steps
    if last is not None and last.HasField("speculation"):
        record.draft_tokens = last.speculation.draft_tokens
        record.accepted_tokens = last.speculation.accepted_tokens
        record.cache_hits = last.speculation.cache_hits
        record.cache_misses = last.speculation.cache_misses
        record.skipped_waits = last.speculation.skipped_waits
        record.sources = {
            name: (source.draft_tokens, source.accepted_tokens)
            for name, source in last.speculation.sources.items()
        }
    return record
