"""The Ray Serve application: the same coordinator, from the same tandem config, behind Serve's
gRPC ingress (tandem.v1.Tandem) and an OpenAI-compatible HTTP API.

One Serve replica owns one coordinator, which places the target and drafter pools itself; scale
with `target.replicas` and `speculation.drafters.replicas`, not with Serve replicas.

    serve run deploy/serve/local-cpu.yaml          # a local cluster, in the foreground
    serve deploy deploy/serve/local-cpu.yaml       # a running cluster (ray start / KubeRay)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from tandem.cluster.config.cpus import keep_off
from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.frontdoor.api import TandemAPI
from tandem.cluster.frontdoor.auth import authorized
from tandem.cluster.frontdoor.coordinator import Chunk, Coordinator
from tandem.cluster.frontdoor.prometheus import start_metrics
from tandem.cluster.transport.messages import RequestError
from tandem.deploy import openai_api, openai_requests, openai_responses
from tandem.protos import tandem_pb2 as pb

GRPC_SERVICER_FUNCTION = "tandem.protos.tandem_pb2_grpc.add_TandemServicer_to_server"


def unauthenticated() -> RequestError:
    return RequestError("UNAUTHENTICATED", "missing or wrong bearer token (Authorization)")


http = FastAPI(title="tandem", description="OpenAI-compatible API of a tandem deployment")


class _HTTPError(Exception):
    """Carries a RequestError out of a FastAPI dependency to the OpenAI error handler."""

    def __init__(self, error: RequestError) -> None:
        self.error = error


@http.exception_handler(_HTTPError)
async def _http_error(request: Request, exc: _HTTPError) -> JSONResponse:
    chat = request.url.path.endswith("/chat/completions")
    status, body = openai_responses.error_response(exc.error, chat)
    return JSONResponse(body, status_code=status)


# Helpers are defined before the class: serve.ingress pickles it at definition time.
async def _sse(
    events: openai_responses.EventStream, firsts: list[Chunk], streams: list[AsyncIterator[Chunk]]
) -> AsyncIterator[str]:
    """The events of n choices as their chunks come, interleaved."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, first: Chunk, chunks: AsyncIterator[Chunk]) -> None:
        try:
            await queue.put((index, first))
            async for chunk in chunks:
                await queue.put((index, chunk))
        except RequestError as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    tasks = [
        asyncio.create_task(pump(i, first, chunks))
        for i, (first, chunks) in enumerate(zip(firsts, streams, strict=True))
    ]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, RequestError):  # the status line is sent: report in-band
                yield openai_responses.sse(
                    openai_responses.error_response(item, events.parsed.chat)[1]
                )
            else:
                for event in events.events(index, item):
                    yield event
        for event in events.final():
            yield event
    finally:  # a client that goes away aborts every choice
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for chunks in streams:
            await chunks.aclose()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(http)
class TandemDeployment:
    """gRPC methods are named like tandem.v1.Tandem's RPCs (Serve's gRPC ingress calls them);
    HTTP routes are OpenAI's."""

    def __init__(self, config: dict[str, Any]) -> None:
        # tandem's one-line records (refusals) reach the replica's log, where Serve keeps it.
        tandem_log = logging.getLogger("tandem")
        tandem_log.setLevel(logging.INFO)
        if not tandem_log.handlers and not logging.getLogger().handlers:
            tandem_log.addHandler(logging.StreamHandler())
        self.config = TandemConfig.from_dict(config)
        auth = self.config.server.auth
        self.token = auth.token() if auth else None
        keep_off(self.config.target.core_binding())  # this replica off the target engines' CPUs
        self.coordinator = Coordinator.start(self.config)
        self.api = TandemAPI(self.coordinator)
        self.model = self.config.models.target
        self.max_model_len = self.coordinator.limits.max_model_len
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
            raise self.coordinator.reject(unauthenticated())

    @staticmethod
    def _refuse(context: RayServegRPCContext, exc: RequestError) -> None:
        """Serve's gRPC ingress answers with the status set here. Returning (not raising) keeps
        a refusal to the coordinator's one log line, not Serve's traceback."""
        context.set_code(grpc.StatusCode[exc.code])
        context.set_details(str(exc))

    async def _unary(self, context: RayServegRPCContext, call, refused: Any):
        """A unary RPC: `call()` (a value or an awaitable), or `refused` with the status set."""
        try:
            self._check(context)
            result = call()
            return await result if inspect.isawaitable(result) else result
        except RequestError as exc:
            self._refuse(context, exc)
            return refused

    async def Generate(self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext):
        return await self._unary(
            grpc_context, lambda: self.api.generate(request), pb.GenerateResponse()
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            self._check(grpc_context)
            async for response in self.api.generate_stream(request):
                yield response
        except RequestError as exc:
            # Serve applies the status with a message, so the stream ends with one empty
            # message before the status: that is how its ingress reports an error without a
            # traceback in the log.
            self._refuse(grpc_context, exc)
            yield pb.GenerateResponse()

    async def Abort(self, request: pb.AbortRequest, grpc_context: RayServegRPCContext):
        return await self._unary(grpc_context, lambda: self.api.abort(request), pb.AbortResponse())

    async def GetModelInfo(self, request, grpc_context: RayServegRPCContext):
        return await self._unary(grpc_context, self.api.model_info, pb.ModelInfo())

    async def GetStats(self, request, grpc_context: RayServegRPCContext):
        return await self._unary(grpc_context, self.api.stats, pb.Stats())

    # ---- OpenAI-compatible HTTP ---------------------------------------------------------------

    @http.get("/health")
    def health(self) -> dict[str, str]:
        """Open without a token, for probes; 503 while draining."""
        if self.coordinator.draining:
            raise _HTTPError(RequestError("UNAVAILABLE", "draining"))
        return {"status": "ok"}

    def _authorize(self, request: Request) -> None:
        if not authorized(request.headers.getlist("authorization"), self.token):
            raise _HTTPError(self.coordinator.reject(unauthenticated()))

    async def _body(self, request: Request) -> Any:
        self._authorize(request)
        try:
            return await request.json()
        except ValueError:
            error = RequestError("INVALID_ARGUMENT", "the body is not valid JSON")
            raise self._refused(error) from None

    def _refused(self, exc: RequestError) -> _HTTPError:
        """A refusal made here, before admission: counted and logged like the coordinator's."""
        return _HTTPError(self.coordinator.reject(exc))

    @http.get("/version")
    def version(self, request: Request) -> dict[str, str]:
        self._authorize(request)
        return openai_api.version()

    @http.get("/v1/models")
    def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return openai_api.models_response(self.model, self.created, self.max_model_len)

    @http.get("/v1/models/{model_id:path}")
    def model(self, model_id: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        if model_id != self.model:
            raise self._refused(
                RequestError("NOT_FOUND", f"model: {model_id!r} is not served; use {self.model!r}")
            )
        return openai_api.model_card(self.model, self.created, self.max_model_len)

    @http.post("/tokenize")
    async def tokenize(self, request: Request) -> dict[str, Any]:
        body = await self._body(request)
        work = functools.partial(
            openai_api.tokenize, body, self.model, max_model_len=self.max_model_len
        )
        try:
            return await self.coordinator.with_tokenizer(work)
        except RequestError as exc:
            raise self._refused(exc) from None

    @http.post("/detokenize")
    async def detokenize(self, request: Request) -> dict[str, str]:
        body = await self._body(request)
        work = functools.partial(
            openai_api.detokenize, body, self.model, vocab_size=self.coordinator.limits.vocab_size
        )
        try:
            return await self.coordinator.with_tokenizer(work)
        except RequestError as exc:
            raise self._refused(exc) from None

    @http.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._openai(request, chat=False)

    @http.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._openai(request, chat=True)

    async def _openai(self, request: Request, chat: bool):
        body = await self._body(request)
        try:
            parsed = openai_requests.parse(body, self.model, chat)
        except RequestError as exc:
            raise self._refused(exc) from None
        streams = [self.api.stream(r) for r in parsed.requests]
        try:
            # Refusals surface at each choice's first chunk, before any byte is sent.
            firsts = [await anext(chunks) for chunks in streams]
            if parsed.stream:
                events = openai_responses.EventStream(self.model, parsed)
                return StreamingResponse(
                    _sse(events, firsts, streams), media_type="text/event-stream"
                )
            choices = [
                [first, *[c async for c in chunks]]
                for first, chunks in zip(firsts, streams, strict=True)
            ]
        except RequestError as exc:
            for chunks in streams:  # the choices already admitted are aborted
                await chunks.aclose()
            raise _HTTPError(exc) from None
        return openai_responses.completion_response(choices, self.model, parsed)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's entry point (`import_path: tandem.deploy.serve_app:app_builder`): the tandem
    config comes from the application's args (`config` inline, or `config_path`)."""
    config = TandemConfig.from_serve_args(args)
    config.check_serving(exposed=True)  # Serve's gRPC ingress listens on every interface
    # The coordinator admits requests (server.max_inflight): Serve should not queue before it.
    deployment = TandemDeployment.options(max_ongoing_requests=config.server.max_inflight + 8)
    return deployment.bind(config.model_dump(mode="json"))
