"""The gRPC front door: tandem.v1.Tandem, grpc.health.v1.Health and server reflection.

A thin shell over TandemAPI, with optional TLS / mutual TLS and bearer-token auth (health stays
open). Refusals become gRPC statuses with the coordinator's message;
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

from tandem.cluster.api import TandemAPI, token_matches
from tandem.cluster.config import ConfigError, TLSConfig
from tandem.cluster.coordinator import Coordinator
from tandem.cluster.metrics import start_metrics
from tandem.cluster.requests import RequestError
from tandem.protos import tandem_pb2 as pb
from tandem.protos import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tandem"].full_name
# Open without a token: orchestrators probe health before they hold any secret.
OPEN_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"


class TandemServicer(pb_grpc.TandemServicer):
    """gRPC shell over TandemAPI: a RequestError becomes the status it names."""

    def __init__(self, api: TandemAPI) -> None:
        self.api = api

    async def Generate(self, request, context):
        try:
            return await self.api.generate(request)
        except RequestError as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))

    async def GenerateStream(self, request, context):
        try:
            async for response in self.api.generate_stream(request):
                yield response
        except RequestError as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))

    async def Abort(self, request, context):
        return self.api.abort(request)

    async def GetModelInfo(self, request, context):
        return self.api.model_info()

    async def GetStats(self, request, context):
        return await self.api.stats()


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without the bearer token with UNAUTHENTICATED; health stays open.
    `on_refuse` counts and logs each refusal (Coordinator.reject)."""

    def __init__(self, token: str, on_refuse=None) -> None:
        self.token = token
        self.on_refuse = on_refuse

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if token_matches(metadata.get("authorization"), self.token):
            return handler
        if self.on_refuse is not None:
            self.on_refuse(RequestError("UNAUTHENTICATED", f"{details.method}: no valid token"))
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses the call."""

    async def refuse(request, context):
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization)"
        )

    async def refuse_stream(request, context):
        await refuse(request, context)
        yield  # makes this an async generator, as streaming handlers must be

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, clients must present a certificate it signed."""
    try:
        key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
        client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    except OSError as exc:
        raise ConfigError(f"server.tls: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class Server:
    """A started gRPC server around a coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        server = coordinator.config.server
        self.health = health.aio.HealthServicer()
        auth = [TokenAuth(server.auth.token(), coordinator.reject)] if server.auth else []
        self.grpc = grpc.aio.server(interceptors=auth)
        pb_grpc.add_TandemServicer_to_server(TandemServicer(TandemAPI(coordinator)), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        bind = f"{server.host}:{server.port}"
        if server.tls:
            self.port = self.grpc.add_secure_port(bind, server_credentials(server.tls))
        else:
            self.port = self.grpc.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"cannot bind {server.host}:{server.port}")
        self.address = f"{server.host}:{self.port}"

    async def start(self) -> None:
        start_metrics(self.coordinator)
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
