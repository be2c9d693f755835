"""tandem's API as plain async methods over the coordinator, shared by every front door.

The gRPC server, the OpenAI app and the Ray Serve app's gRPC ingress are thin shells over this:
each turns a RequestError into its own transport's status, so validation and messages are the
same everywhere.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable

from tandem.cluster.frontdoor.coordinator import Chunk, Coordinator
from tandem.cluster.transport.messages import RequestError
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
    for chunk in chunks:
        response.logprobs.extend(token_logprobs(chunk.logprobs or ()))
    response.prompt_logprobs.extend(token_logprobs(chunks[0].prompt_logprobs or ()))
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


def token_logprobs(positions: Iterable) -> list[pb.TokenLogprobs]:
    """Per-position entries of a chunk (tandem.plugins.vllm_io.positions) as protobuf."""
    return [
        pb.TokenLogprobs(token=_logprob(chosen), top=[_logprob(e) for e in top])
        for chosen, top in positions
    ]


def _logprob(entry) -> pb.Logprob:
    token_id, token, logprob, rank = entry
    # vLLM's server clamps -inf to -9999 so the value stays JSON; the same here.
    return pb.Logprob(token_id=token_id, token=token, logprob=max(logprob, -9999.0), rank=rank)


class TandemAPI:
    """The RPCs of tandem.v1.Tandem; refusals and failures raise RequestError."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def stream(self, request: pb.GenerateRequest) -> AsyncIterator[Chunk]:
        prepared = await self.coordinator.admit(request)
        try:
            async for chunk in self.coordinator.generate(prepared):
                yield chunk
        except RequestError:
            raise
        except Exception as exc:
            raise internal_error(f"request {prepared.request_id}") from exc

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


def internal_error(what: str) -> RequestError:
    """An INTERNAL status for a failure that is not the client's: the client gets a short
    message with an error id; the details (tracebacks, hosts, actor ids) go to the log only.
    Call from an `except` block."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("%s failed (error %s)", what, error_id)
    return RequestError(
        "INTERNAL", f"{what} failed; the server log has the details (error {error_id})"
    )
