"""The gRPC front door: tandem.v1.Tandem, grpc.health.v1.Health and server reflection.

A thin shell over TandemAPI, with optional TLS / mutual TLS and bearer-token auth (health stays
open). Refusals become gRPC statuses with the coordinator's message; a message that is too large
(server.max_request_bytes) or does not parse is refused before any work; anything else that goes
wrong is INTERNAL with a short message and an error id, the details in the log only. A client
that cancels or whose deadline passes has its request aborted in the engine (the coordinator's
stream aborts it when this handler's task is cancelled).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.cluster.config.errors import ConfigError
from tandem.cluster.config.front_door import TLSConfig
from tandem.cluster.frontdoor.api import TandemAPI, internal_error
from tandem.cluster.frontdoor.auth import authorized
from tandem.cluster.frontdoor.coordinator import Coordinator
from tandem.cluster.transport.messages import RequestError
from tandem.protos import tandem_pb2 as pb
from tandem.protos import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tandem"].full_name
# Open without a token: orchestrators probe health before they hold any secret.
OPEN_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"


async def _abort(context: grpc.aio.ServicerContext, exc: RequestError) -> None:
    await context.abort(grpc.StatusCode[exc.code], str(exc))


def _unary(method: Callable) -> Callable:
    """A unary RPC whose RequestError becomes its status, and any other error INTERNAL."""

    @functools.wraps(method)
    async def rpc(self, request, context):
        try:
            return await method(self, request, context)
        except RequestError as exc:
            await _abort(context, exc)
        except Exception:
            await _abort(context, internal_error(method.__name__))

    return rpc


class TandemServicer(pb_grpc.TandemServicer):
    """gRPC shell over TandemAPI: a RequestError becomes the status it names."""

    def __init__(self, api: TandemAPI) -> None:
        self.api = api

    @_unary
    async def Generate(self, request, context):
        return await self.api.generate(request)

    async def GenerateStream(self, request, context):
        try:
            async for response in self.api.generate_stream(request):
                yield response
        except RequestError as exc:
            await _abort(context, exc)
        except Exception:
            await _abort(context, internal_error("GenerateStream"))

    @_unary
    async def Abort(self, request, context):
        return self.api.abort(request)

    @_unary
    async def GetModelInfo(self, request, context):
        return self.api.model_info()

    @_unary
    async def GetStats(self, request, context):
        return await self.api.stats()


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without the bearer token with UNAUTHENTICATED, whatever the method (so
    method names cannot be probed without it); health stays open. `on_refuse` counts and logs
    each refusal (Coordinator.reject)."""

    def __init__(self, token: str, on_refuse=None) -> None:
        self.token = token
        self.on_refuse = on_refuse

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if details.method.startswith(OPEN_METHOD_PREFIX):
            return handler
        metadata = details.invocation_metadata or ()
        if authorized([v for k, v in metadata if k == "authorization"], self.token):
            return handler
        if self.on_refuse is not None:
            self.on_refuse(RequestError("UNAUTHENTICATED", f"{details.method}: no valid token"))
        return _same_shape(handler, _refuse_unauthenticated)


async def _refuse_unauthenticated(request, context):
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing, repeated or wrong bearer token (authorization)",
    )


class MalformedRequests(grpc.aio.ServerInterceptor):
    """A request message that does not parse is refused with INVALID_ARGUMENT (gRPC itself
    answers UNKNOWN), before any work. Methods with a stream of requests (reflection) keep
    gRPC's own handling."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = details.method

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as exc:
                return _Malformed(str(exc))

        async def refuse(request: _Malformed, context) -> None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid message of {method}: {request.reason}",
            )

        if handler.unary_unary:

            async def unary(request, context):
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                return await handler.unary_unary(request, context)

            return _same_shape(handler, unary, deserialize)

        async def stream(request, context):
            if isinstance(request, _Malformed):
                await refuse(request, context)
            async for response in handler.unary_stream(request, context):
                yield response

        return _same_shape(handler, stream, deserialize)


class _Malformed:
    """What a request that does not parse deserializes to."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _same_shape(
    handler: grpc.RpcMethodHandler | None,
    behavior: Callable,
    request_deserializer: Callable | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` (None: an unknown method, served as unary)
    that runs `behavior`; a coroutine `behavior` is made a stream where the shape streams."""
    if handler is None:
        return grpc.unary_unary_rpc_method_handler(behavior)
    codec = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(behavior, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(behavior, **codec)
    stream = behavior if inspect.isasyncgenfunction(behavior) else _as_stream(behavior)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **codec)
    return grpc.stream_stream_rpc_method_handler(stream, **codec)


def _as_stream(behavior: Callable) -> Callable:
    async def stream(request, context):
        await behavior(request, context)
        yield  # never reached: behavior aborts the call; makes this an async generator

    return stream


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
        self.grpc = grpc.aio.server(
            interceptors=[*auth, MalformedRequests()],
            options=[("grpc.max_receive_message_length", server.max_request_bytes)],
        )
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
            raise ConfigError(f"server.port: cannot bind {server.host}:{server.port}")
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
