"""The gRPC front door: tandem.v1.Tandem, grpc.health.v1.Health and server reflection.

A thin shell over the coordinator. Refusals become gRPC statuses with the coordinator's message;
a client that cancels or whose deadline passes has its request aborted in the engine (the
coordinator's stream aborts it when this handler's task is cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.cluster.coordinator import Chunk, Coordinator
from tandem.cluster.requests import RequestError
from tandem.protos import tandem_pb2 as pb
from tandem.protos import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tandem"].full_name
FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
}


def response_from(chunks: list[Chunk]) -> pb.GenerateResponse:
    """One response for one or more chunks of a request (the finish fields from the last)."""
    last = chunks[-1]
    response = pb.GenerateResponse(
        request_id=last.request_id,
        token_ids=[t for c in chunks for t in c.token_ids],
        text="".join(c.text for c in chunks),
        finish_reason=FINISH_REASONS[last.finish_reason],
    )
    if last.finish_reason is not None:
        response.usage.CopyFrom(
            pb.Usage(
                prompt_tokens=last.prompt_tokens,
                completion_tokens=last.completion_tokens,
                total_tokens=last.prompt_tokens + last.completion_tokens,
            )
        )
        response.timings.CopyFrom(
            pb.Timings(
                time_to_first_token_s=last.time_to_first_token_s,
                time_per_output_token_s=last.time_per_output_token_s,
                total_s=last.total_s,
            )
        )
        if last.speculation is not None:
            response.speculation.CopyFrom(pb.SpeculationStats(**last.speculation))
    return response


class TandemServicer(pb_grpc.TandemServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def _admit(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            return self.coordinator.admit(request)
        except RequestError as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))

    async def _chunks(self, prepared, context: grpc.aio.ServicerContext):
        try:
            async for chunk in self.coordinator.generate(prepared):
                yield chunk
        except RequestError as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))
        except Exception as exc:
            log.exception("request %s failed", prepared.request_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {exc}")

    async def Generate(self, request, context):
        prepared = await self._admit(request, context)
        chunks = [chunk async for chunk in self._chunks(prepared, context)]
        return response_from(chunks)

    async def GenerateStream(self, request, context):
        prepared = await self._admit(request, context)
        async for chunk in self._chunks(prepared, context):
            yield response_from([chunk])

    async def Abort(self, request, context):
        return pb.AbortResponse(found=self.coordinator.abort(request.request_id))

    async def GetModelInfo(self, request, context):
        return self.coordinator.model_info()

    async def GetStats(self, request, context):
        return await self.coordinator.stats()


class Server:
    """A started gRPC server around a coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.health = health.aio.HealthServicer()
        self.grpc = grpc.aio.server()
        pb_grpc.add_TandemServicer_to_server(TandemServicer(coordinator), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        server = coordinator.config.server
        self.port = self.grpc.add_insecure_port(f"{server.host}:{server.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {server.host}:{server.port}")
        self.address = f"{server.host}:{self.port}"

    async def start(self) -> None:
        await self.grpc.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """Drain in-flight requests for server.drain_timeout_s, then stop serving."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        left = await self.coordinator.drain(self.coordinator.config.server.drain_timeout_s)
        if left:
            log.warning("stopping with %d requests still running; they are aborted", left)
        await self.grpc.stop(grace=1.0)


async def serve_until_signal(server: Server, on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    await stop.wait()
    await server.stop()
