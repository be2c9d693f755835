"""tandem's answers in the OpenAI wire format, as vLLM's OpenAI server writes them: chunks to
whole responses and server-sent events, RequestErrors to vLLM's error objects.

Plain logic (no Serve, no Ray): the OpenAI app (openai_app.py) sends what these build.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

from tandem.cluster.frontdoor.coordinator import Chunk
from tandem.cluster.frontdoor.openai_requests import OpenAIRequest
from tandem.cluster.transport.messages import RequestError

# gRPC status names (RequestError.code) to HTTP statuses and the error types vLLM's server (and
# the openai client's exception classes) use.
HTTP_STATUS = {
    "INVALID_ARGUMENT": (400, "BadRequestError"),
    "OUT_OF_RANGE": (400, "BadRequestError"),
    "UNAUTHENTICATED": (401, "AuthenticationError"),
    "NOT_FOUND": (404, "NotFoundError"),
    "ALREADY_EXISTS": (409, "ConflictError"),
    "RESOURCE_EXHAUSTED": (429, "RateLimitError"),
    "UNAVAILABLE": (503, "ServiceUnavailableError"),
    "INTERNAL": (500, "InternalServerError"),
}


def error_response(exc: RequestError, chat: bool = True) -> tuple[int, dict[str, Any]]:
    """(HTTP status, vLLM's error object) for a refusal; `param` names the request field."""
    status, kind = HTTP_STATUS.get(exc.code, (500, "InternalServerError"))
    error = {"message": str(exc), "type": kind, "param": openai_param(exc.field, chat)}
    return status, {"error": {**error, "code": status}}


def openai_param(field: str | None, chat: bool = True) -> str | None:
    """The OpenAI field a tandem field path is about: sampling.max_tokens -> max_tokens,
    prompt.chat.messages[2].role -> messages, logit_bias[7] -> logit_bias."""
    if field is None:
        return None
    name = re.split(r"[\[]", field.removeprefix("sampling."))[0]
    if name == "prompt" or name.startswith("prompt."):
        return "messages" if chat else "prompt"
    if name.startswith("speculation.") and name != "speculation.mode":
        return name.removeprefix("speculation.")
    return name.split(".")[0]


def _usage(lasts: Iterable[Chunk]) -> dict[str, int]:
    lasts = list(lasts)
    prompt = lasts[0].prompt_tokens
    completion = sum(c.completion_tokens for c in lasts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _response_id(chat: bool, request_id: str) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + request_id


def completion_response(
    choices: list[list[Chunk]], model: str, parsed: OpenAIRequest
) -> dict[str, Any]:
    """The whole (non-streaming) response: one choice per finished request."""
    out = []
    for index, chunks in enumerate(choices):
        choice: dict[str, Any] = {"index": index, "finish_reason": chunks[-1].finish_reason}
        text = "".join(c.text for c in chunks)
        positions = [p for c in chunks for p in (c.logprobs or ())]
        logprobs = None if parsed.logprobs is None else LogprobsFormat(parsed)(positions)
        if parsed.chat:
            choice.update(message={"role": "assistant", "content": text}, logprobs=logprobs)
        else:
            choice.update(text=text, logprobs=logprobs)
            if chunks[0].prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs(chunks[0].prompt_logprobs)
        out.append(choice)
    response = {
        "id": _response_id(parsed.chat, choices[0][0].request_id),
        "object": "chat.completion" if parsed.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": out,
        "usage": _usage(c[-1] for c in choices),
    }
    if parsed.chat and choices[0][0].prompt_logprobs is not None:
        response["prompt_logprobs"] = prompt_logprobs(choices[0][0].prompt_logprobs)
    return response


class LogprobsFormat:
    """Per-position entries (tandem.plugins.vllm_io.positions) in the answer's logprobs shape,
    cut as vLLM's server cuts them: chat keeps the first `top_logprobs` entries of vLLM's list,
    completions the first `logprobs` + 1 (the sampled token first, then the likeliest)."""

    def __init__(self, parsed: OpenAIRequest) -> None:
        self.chat = parsed.chat
        self.top = parsed.logprobs or 0
        self.offset = 0  # completions: text offset of the next token

    def __call__(self, positions: list) -> dict[str, Any]:
        if self.chat:
            return {"content": [self._chat_entry(chosen, top) for chosen, top in positions]}
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for (_, text, logprob, _), top in positions:
            tokens.append(text)
            token_logprobs.append(logprob)
            tops.append({t: lp for _, t, lp, _ in top[: self.top + 1]})
            offsets.append(self.offset)
            self.offset += len(text)
        return {
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "tokens": tokens,
            "top_logprobs": tops,
        }

    def _chat_entry(self, chosen, top) -> dict[str, Any]:
        def entry(e):
            return {"token": e[1], "logprob": e[2], "bytes": list(e[1].encode())}

        return {**entry(chosen), "top_logprobs": [entry(e) for e in top[: self.top]]}


def prompt_logprobs(positions: list) -> list[dict[str, Any] | None]:
    """vLLM's prompt_logprobs: None for the first prompt token, then {token id: {logprob,
    rank, decoded_token}} per token (the prompt's own token first)."""
    return [None] + [
        {str(t): {"logprob": lp, "rank": rank, "decoded_token": text} for t, text, lp, rank in top}
        for _, top in positions
    ]


class EventStream:
    """Server-sent events of one streaming request: `events(index, chunk)` per chunk as it
    comes (any choice), then `final()`: the usage event when asked for, then [DONE]. The first
    chat event of each choice carries the assistant role, as OpenAI's does."""

    DONE = "data: [DONE]\n\n"

    def __init__(self, model: str, parsed: OpenAIRequest) -> None:
        self.model = model
        self.parsed = parsed
        self.created = int(time.time())
        n = len(parsed.requests)
        self.first = [True] * n
        self.formats = [LogprobsFormat(parsed) for _ in range(n)]
        self.lasts: list[Chunk | None] = [None] * n
        self.id = ""

    def events(self, index: int, chunk: Chunk) -> list[str]:
        self.id = self.id or _response_id(self.parsed.chat, chunk.request_id)
        choice: dict[str, Any] = {"index": index, "finish_reason": chunk.finish_reason}
        logprobs = None
        if self.parsed.logprobs is not None:
            logprobs = self.formats[index](chunk.logprobs or [])
        if self.parsed.chat:
            delta = {"content": chunk.text} if chunk.text or self.first[index] else {}
            if self.first[index]:
                delta["role"] = "assistant"
            choice.update(delta=delta, logprobs=logprobs)
        else:
            choice.update(text=chunk.text, logprobs=logprobs)
            if chunk.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs(chunk.prompt_logprobs)
        self.first[index] = False
        if chunk.finish_reason is not None:
            self.lasts[index] = chunk
        return [sse(self._event(choices=[choice]))]

    def final(self) -> list[str]:
        out = []
        if self.parsed.include_usage and all(self.lasts):
            out.append(sse(self._event(choices=[], usage=_usage(self.lasts))))
        return [*out, self.DONE]

    def _event(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.parsed.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            **fields,
        }


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
