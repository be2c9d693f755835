"""tandem's API as plain async methods over the coordinator, shared by every front door.

The gRPC server and the Ray Serve app (gRPC ingress and OpenAI HTTP) are thin shells over this:
each turns a RequestError into its own transport's status, so validation and messages are the
same everywhere.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator

from tandem.cluster.coordinator import Chunk, Coordinator
from tandem.cluster.requests import RequestError
from tandem.protos import tandem_pb2 as pb

log = logging.getLogger("tandem.api")

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
        if last.figures is not None:
            response.speculation.CopyFrom(last.figures.to_proto())
    return response


class TandemAPI:
    """The RPCs of tandem.v1.Tandem; refusals and failures raise RequestError."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def stream(self, request: pb.GenerateRequest) -> AsyncIterator[Chunk]:
        prepared = self.coordinator.admit(request)
        try:
            async for chunk in self.coordinator.generate(prepared):
                yield chunk
        except RequestError:
            raise
        except Exception as exc:
            log.exception("request %s failed", prepared.request_id)
            raise RequestError("INTERNAL", f"generation failed: {exc}") from exc

    async def generate(self, request: pb.GenerateRequest) -> pb.GenerateResponse:
        return response_from([chunk async for chunk in self.stream(request)])

    async def generate_stream(
        self, request: pb.GenerateRequest
    ) -> AsyncIterator[pb.GenerateResponse]:
        async for chunk in self.stream(request):
            yield response_from([chunk])

    def abort(self, request: pb.AbortRequest) -> pb.AbortResponse:
        return pb.AbortResponse(found=self.coordinator.abort(request.request_id))

    def model_info(self) -> pb.ModelInfo:
        return self.coordinator.model_info()

    async def stats(self) -> pb.Stats:
        return await self.coordinator.stats()


def token_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an `authorization` header/metadata value carries the bearer token (always true
    when no token is configured). Constant-time, so the comparison leaks nothing."""
    if token is None:
        return True
    scheme, _, value = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)
