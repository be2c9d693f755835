"""The Ray Serve application: the same coordinator, from the same tandem config, behind Serve's
gRPC ingress (tandem.v1.Tandem) and an OpenAI-compatible HTTP API.

One Serve replica owns one coordinator, which places the target and drafter pools itself; scale
with `target.replicas` and `speculation.drafters.replicas`, not with Serve replicas.

    serve run deploy/serve/local-cpu.yaml          # a local cluster, in the foreground
    serve deploy deploy/serve/local-cpu.yaml       # a running cluster (ray start / KubeRay)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from tandem.cluster.api import TandemAPI
from tandem.cluster.auth import authorized
from tandem.cluster.config import TandemConfig
from tandem.cluster.coordinator import Chunk, Coordinator
from tandem.cluster.metrics import start_metrics
from tandem.cluster.requests import RequestError
from tandem.deploy import openai_api
from tandem.protos import tandem_pb2 as pb

GRPC_SERVICER_FUNCTION = "tandem.protos.tandem_pb2_grpc.add_TandemServicer_to_server"
UNAUTHENTICATED = RequestError("UNAUTHENTICATED", "missing or wrong bearer token (Authorization)")

http = FastAPI(title="tandem", description="OpenAI-compatible API of a tandem deployment")


class _HTTPError(Exception):
    """Carries a RequestError out of a FastAPI dependency to the OpenAI error handler."""

    def __init__(self, error: RequestError) -> None:
        self.error = error


@http.exception_handler(_HTTPError)
async def _http_error(request: Request, exc: _HTTPError) -> JSONResponse:
    status, body = openai_api.error_response(exc.error)
    return JSONResponse(body, status_code=status)


# Helpers are defined before the class: serve.ingress pickles it at definition time.
async def _sse(
    events: openai_api.EventStream, first: Chunk, chunks: AsyncIterator[Chunk]
) -> AsyncIterator[str]:
    for event in events.events(first):
        yield event
    try:
        async for chunk in chunks:
            for event in events.events(chunk):
                yield event
    except RequestError as exc:  # the status line is sent: report in-band, as OpenAI does
        yield openai_api.sse(openai_api.error_response(exc)[1])
    yield events.DONE


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(http)
class TandemDeployment:
    """gRPC methods are named like tandem.v1.Tandem's RPCs (Serve's gRPC ingress calls them);
    HTTP routes are OpenAI's."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = TandemConfig.from_dict(config)
        auth = self.config.server.auth
        self.token = auth.token() if auth else None
        self.coordinator = Coordinator.start(self.config)
        self.api = TandemAPI(self.coordinator)
        self.model = self.config.models.target
        self.created = int(time.time())
        start_metrics(self.coordinator)

    def __del__(self) -> None:
        """Serve calls this when the replica stops: free the pools' actors and bundles."""
        coordinator = getattr(self, "coordinator", None)  # None when __init__ failed
        if coordinator is not None:
            coordinator.shutdown()

    # ---- gRPC (Serve's gRPC ingress) ----------------------------------------------------------

    def _check(self, context: RayServegRPCContext) -> None:
        metadata = context.invocation_metadata()
        if not authorized([v for k, v in metadata if k == "authorization"], self.token):
            self._fail(context, UNAUTHENTICATED)

    @staticmethod
    def _fail(context: RayServegRPCContext, exc: RequestError) -> None:
        """Serve's gRPC ingress returns the status set here when the method raises."""
        context.set_code(grpc.StatusCode[exc.code])
        context.set_details(str(exc))
        raise exc

    async def Generate(self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext):
        self._check(grpc_context)
        try:
            return await self.api.generate(request)
        except RequestError as exc:
            self._fail(grpc_context, exc)

    async def GenerateStream(
        self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        self._check(grpc_context)
        try:
            async for response in self.api.generate_stream(request):
                yield response
        except RequestError as exc:
            self._fail(grpc_context, exc)

    async def Abort(self, request: pb.AbortRequest, grpc_context: RayServegRPCContext):
        self._check(grpc_context)
        return self.api.abort(request)

    async def GetModelInfo(self, request, grpc_context: RayServegRPCContext):
        self._check(grpc_context)
        return self.api.model_info()

    async def GetStats(self, request, grpc_context: RayServegRPCContext):
        self._check(grpc_context)
        return await self.api.stats()

    # ---- OpenAI-compatible HTTP ---------------------------------------------------------------

    @http.get("/health")
    def health(self) -> dict[str, str]:
        """Open without a token, for probes; 503 while draining."""
        if self.coordinator.draining:
            raise _HTTPError(RequestError("UNAVAILABLE", "draining"))
        return {"status": "ok"}

    def _authorize(self, request: Request) -> None:
        if not authorized(request.headers.getlist("authorization"), self.token):
            raise _HTTPError(UNAUTHENTICATED)

    @http.get("/v1/models")
    def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return openai_api.models_response(self.model, self.created)

    @http.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._openai(request, chat=False)

    @http.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._openai(request, chat=True)

    async def _openai(self, request: Request, chat: bool):
        self._authorize(request)
        try:
            try:
                body = await request.json()
            except ValueError:
                raise RequestError("INVALID_ARGUMENT", "the body is not valid JSON") from None
            convert = openai_api.chat_request if chat else openai_api.completion_request
            try:
                prepared = convert(body, self.model)
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
            except RequestError:
                raise
            except (TypeError, ValueError, AttributeError) as exc:  # a value protobuf refuses
                raise RequestError(
                    "INVALID_ARGUMENT", f"a field has a value of the wrong type or size: {exc}"
                ) from None
            chunks = self.api.stream(prepared)
            first = await anext(chunks)  # refusals surface here, before any byte is sent
            if body.get("stream"):
                events = openai_api.EventStream(self.model, chat, usage)
                return StreamingResponse(
                    _sse(events, first, chunks), media_type="text/event-stream"
                )
            rest = [chunk async for chunk in chunks]
        except RequestError as exc:
            raise _HTTPError(exc) from None
        return openai_api.completion_response([first, *rest], self.model, chat)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's entry point (`import_path: tandem.deploy.serve_app:app_builder`): the tandem
    config comes from the application's args (`config` inline, or `config_path`)."""
    config = TandemConfig.from_serve_args(args)
    # The coordinator admits requests (server.max_inflight): Serve should not queue before it.
    deployment = TandemDeployment.options(max_ongoing_requests=config.server.max_inflight + 8)
    return deployment.bind(config.model_dump(mode="json"))
