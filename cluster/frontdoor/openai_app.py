"""The OpenAI-compatible HTTP API as one FastAPI app, served by `tandem serve` (http_server.py,
beside gRPC) and by the Ray Serve app (deploy/serve_app.py) alike.

Routes are vLLM's: /v1/chat/completions, /v1/completions (JSON or server-sent events),
/v1/models, /tokenize, /detokenize, /version, /health and /metrics. Requests are read by
openai_requests.py, answered by openai_responses.py; refusals take vLLM's error shape with the
HTTP status of their gRPC code. The bearer token (server.auth) guards every route but /health,
and /metrics unless server.metrics_auth, as vLLM's --api-key guards its /v1 routes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tandem.cluster.frontdoor import openai_api, openai_requests, openai_responses
from tandem.cluster.frontdoor.api import TandemAPI
from tandem.cluster.frontdoor.auth import authorized, unauthenticated
from tandem.cluster.frontdoor.coordinator import Chunk, Coordinator
from tandem.cluster.frontdoor.prometheus import Metrics
from tandem.cluster.transport.messages import RequestError

log = logging.getLogger("tandem.http")
# Names the request fields an answer ignored (unknown to tandem; vLLM's server ignores them too,
# with a warning in its log): clients see what was not honoured.
IGNORED_HEADER = "tandem-ignored-fields"


class HTTPRefusal(Exception):
    """A RequestError on its way out of a route to the OpenAI error handler."""

    def __init__(self, error: RequestError) -> None:
        self.error = error


async def _refusal(request: Request, exc: HTTPRefusal) -> JSONResponse:
    chat = request.url.path.endswith("/chat/completions")
    status, body = openai_responses.error_response(exc.error, chat)
    return JSONResponse(body, status_code=status)


def build(coordinator: Coordinator, metrics: Metrics) -> FastAPI:
    """The app over one coordinator; `metrics` is what /metrics shows."""
    server = coordinator.config.server
    token = server.auth.token() if server.auth else None
    routes = _Routes(coordinator, token)
    app = FastAPI(title="tandem", description="OpenAI-compatible API of a tandem deployment")
    app.add_exception_handler(HTTPRefusal, _refusal)
    app.get("/health")(routes.health)
    app.get("/version")(routes.version)
    app.get("/v1/models")(routes.models)
    app.get("/v1/models/{model_id:path}")(routes.model_card)
    app.post("/tokenize")(routes.tokenize)
    app.post("/detokenize")(routes.detokenize)
    app.post("/v1/completions")(routes.completions)
    app.post("/v1/chat/completions")(routes.chat_completions)
    metrics_token = token if server.metrics_auth else None

    @app.get("/metrics")
    def scrape(request: Request) -> Response:
        if not authorized(request.headers.getlist("authorization"), metrics_token):
            raise HTTPRefusal(unauthenticated())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Routes:
    """The handlers, over one coordinator. Every refusal made here, before admission, is
    counted and logged like the coordinator's own (Coordinator.reject)."""

    def __init__(self, coordinator: Coordinator, token: str | None) -> None:
        self.coordinator = coordinator
        self.api = TandemAPI(coordinator)
        self.token = token
        self.model = coordinator.config.models.target
        self.max_model_len = coordinator.limits.max_model_len
        self.created = int(time.time())

    def _refused(self, exc: RequestError) -> HTTPRefusal:
        return HTTPRefusal(self.coordinator.reject(exc))

    def _authorize(self, request: Request) -> None:
        if not authorized(request.headers.getlist("authorization"), self.token):
            raise self._refused(unauthenticated())

    async def _body(self, request: Request) -> Any:
        self._authorize(request)
        try:
            return await request.json()
        except ValueError:
            raise self._refused(
                RequestError("INVALID_ARGUMENT", "the body is not valid JSON")
            ) from None

    def health(self) -> dict[str, str]:
        """Open without a token, for probes; 503 while draining."""
        if self.coordinator.draining:
            raise HTTPRefusal(RequestError("UNAVAILABLE", "draining"))
        return {"status": "ok"}

    def version(self, request: Request) -> dict[str, str]:
        self._authorize(request)
        return openai_api.version()

    def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return openai_api.models_response(self.model, self.created, self.max_model_len)

    def model_card(self, model_id: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        if model_id != self.model:
            raise self._refused(
                RequestError("NOT_FOUND", f"model: {model_id!r} is not served; use {self.model!r}")
            )
        return openai_api.model_card(self.model, self.created, self.max_model_len)

    async def tokenize(self, request: Request) -> dict[str, Any]:
        body = await self._body(request)
        work = functools.partial(
            openai_api.tokenize, body, self.model, max_model_len=self.max_model_len
        )
        return await self._with_tokenizer(work)

    async def detokenize(self, request: Request) -> dict[str, str]:
        body = await self._body(request)
        vocab_size = self.coordinator.limits.vocab_size
        work = functools.partial(openai_api.detokenize, body, self.model, vocab_size=vocab_size)
        return await self._with_tokenizer(work)

    async def _with_tokenizer(self, work) -> Any:
        try:
            return await self.coordinator.with_tokenizer(work)
        except RequestError as exc:
            raise self._refused(exc) from None

    async def completions(self, request: Request) -> Any:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Any:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Any:
        body = await self._body(request)
        try:
            parsed = openai_requests.parse(body, self.model, chat)
        except RequestError as exc:
            raise self._refused(exc) from None
        headers = {}
        if parsed.ignored:
            headers[IGNORED_HEADER] = ", ".join(parsed.ignored)
            log.warning("ignored unknown request fields: %s", headers[IGNORED_HEADER])
        streams = [self.api.stream(r) for r in parsed.requests]
        try:
            # Refusals surface at each choice's first chunk, before any byte is sent.
            firsts = [await anext(chunks) for chunks in streams]
            if parsed.stream:
                events = openai_responses.EventStream(self.model, parsed)
                return StreamingResponse(
                    _sse(events, firsts, streams), media_type="text/event-stream", headers=headers
                )
            choices = [
                [first, *[c async for c in chunks]]
                for first, chunks in zip(firsts, streams, strict=True)
            ]
        except RequestError as exc:
            for chunks in streams:  # the choices already admitted are aborted
                await chunks.aclose()
            raise HTTPRefusal(exc) from None
        answer = openai_responses.completion_response(choices, self.model, parsed)
        return JSONResponse(answer, headers=headers)


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
