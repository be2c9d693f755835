"""The typed messages between the front door and a target replica: a request admitted for the
engine, each step's outputs, and the error that refuses or fails a request. They cross Ray and
the output socket, so they are plain, picklable dataclasses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tandem.cluster.telemetry.figures import RequestFigures

_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


class RequestError(ValueError):
    """A request the server refuses; `code` is a grpc.StatusCode name. Messages start with the
    field they are about (`sampling.max_tokens: ...`), which `field` keeps for front doors that
    report it apart (the OpenAI API's `param`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        match = _FIELD.match(message)
        self.field = match.group(1) if match else None

    def __reduce__(self):  # picklable (Ray, Serve), though __init__ takes two arguments
        return type(self), (self.code, str(self))


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]  # keyword arguments of vllm.SamplingParams
    mode: str = "off"  # speculation mode
    num_speculative_tokens: int = 0  # the request's k
    pipelined: bool = False


@dataclass(frozen=True)
class StepOutput:
    """One engine step's new tokens of a request; the last also finishes it."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "stop", "length" or "abort" on the last one
    figures: RequestFigures | None = None  # on the last one
    logprobs: list | None = None  # per new token, with sampling.logprobs (positions below)
    prompt_logprobs: list | None = None  # per prompt token after the first, on the first one
    # On the last one, when the request failed: a RequestError (the engine failed a step with
    # it) or another exception (what went wrong, for the log).
    error: Exception | None = None


@dataclass(frozen=True)
class OutputBatch:
    """What one engine step produced for one coordinator's requests."""

    outputs: list[StepOutput]
    sent_at: float  # time.time() when the replica sent it (transit time, same node)
