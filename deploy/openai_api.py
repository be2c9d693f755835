"""The OpenAI wire format over tandem's API: request bodies to GenerateRequests, chunks to
responses and server-sent events, RequestErrors to OpenAI-style error JSON.

Plain logic (no Serve, no Ray): the Serve app is a thin shell that routes HTTP here, so the
OpenAI API shares the gRPC API's validation and messages (tandem.cluster.requests).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tandem.cluster.coordinator import Chunk
from tandem.cluster.requests import RequestError, invalid
from tandem.protos import tandem_pb2 as pb
from tandem.protos.modes import proto_mode
from tandem.speculation.protocol import Mode

# gRPC status names (RequestError.code) to HTTP statuses and OpenAI error types.
HTTP_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "conflict_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
    "INTERNAL": (500, "internal_error"),
}
SPECULATION_MODES = tuple(m.value for m in Mode)  # tandem's extra field `speculation`


def error_response(exc: RequestError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for a refusal."""
    status, kind = HTTP_STATUS.get(exc.code, (500, "internal_error"))
    return status, {"error": {"message": str(exc), "type": kind, "param": None, "code": exc.code}}


def completion_request(body: dict[str, Any], model: str) -> pb.GenerateRequest:
    """/v1/completions: a text prompt (or one list of token ids), raw, no chat template."""
    request = _common(body, model)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        request.text = prompt
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        request.token_ids.ids.extend(prompt)
    else:
        raise invalid("prompt: a string or a list of token ids (one prompt per request)")
    return request


def chat_request(body: dict[str, Any], model: str) -> pb.GenerateRequest:
    """/v1/chat/completions: messages rendered with the model's chat template."""
    request = _common(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages: a list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]: an object with role and content")
        request.chat.messages.add(
            role=str(message.get("role", "")), content=_content(message.get("content"), i)
        )
    return request


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or a list of text parts (OpenAI's content-part form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    raise invalid(f"messages[{i}].content: a string or a list of text parts")


def _common(body: dict[str, Any], model: str) -> pb.GenerateRequest:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    if body.get("model") not in (None, model):
        raise RequestError("NOT_FOUND", f"model: {body['model']!r} is not served; use {model!r}")
    if body.get("n", 1) != 1:
        raise invalid("n: only 1 choice per request is supported")
    for unsupported in ("logprobs", "top_logprobs", "echo", "tools", "functions", "suffix"):
        if body.get(unsupported):
            raise invalid(f"{unsupported}: not supported by tandem")
    sampling = pb.SamplingParams()
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    for name, value, kind in (
        ("temperature", body.get("temperature"), (int, float)),
        ("top_p", body.get("top_p"), (int, float)),
        ("top_k", body.get("top_k"), int),  # vLLM's extra parameter
        ("seed", body.get("seed"), int),
        ("max_tokens", max_tokens, int),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise invalid(f"{name}: expected a number, got {value!r}")
        if name == "seed" and value < 0:
            raise invalid(f"seed: must be >= 0, got {value}")
        setattr(sampling, name, value)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop: a string or a list of strings")
    sampling.stop.extend(stop)
    sampling.stop_token_ids.extend(body.get("stop_token_ids") or [])
    sampling.ignore_eos = bool(body.get("ignore_eos", False))
    request = pb.GenerateRequest(sampling=sampling, request_id=str(body.get("request_id", "")))
    mode = body.get("speculation")  # tandem's extra parameters, as in the gRPC API
    if mode is not None:
        if mode not in SPECULATION_MODES:
            raise invalid(f"speculation: one of {', '.join(SPECULATION_MODES)}, got {mode!r}")
        request.speculation.mode = proto_mode(mode)
    if body.get("num_speculative_tokens") is not None:
        request.speculation.num_speculative_tokens = int(body["num_speculative_tokens"])
    return request


def _usage(last: Chunk) -> dict[str, int]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


def completion_response(chunks: list[Chunk], model: str, chat: bool) -> dict[str, Any]:
    """The whole (non-streaming) response of a finished request."""
    last = chunks[-1]
    text = "".join(c.text for c in chunks)
    choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + last.request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(last),
    }


class EventStream:
    """Server-sent events of one streaming request: `events(chunk)` per chunk as it comes,
    then `DONE`. The first chat event carries the assistant role, as OpenAI's does."""

    DONE = "data: [DONE]\n\n"

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.model = model
        self.chat = chat
        self.include_usage = include_usage
        self.created = int(time.time())
        self.first = True

    def events(self, chunk: Chunk) -> list[str]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": chunk.finish_reason}
        if self.chat:
            choice["delta"] = {"content": chunk.text} if chunk.text or self.first else {}
            if self.first:
                choice["delta"]["role"] = "assistant"
        else:
            choice.update(text=chunk.text, logprobs=None)
        self.first = False
        event = {
            "id": ("chatcmpl-" if self.chat else "cmpl-") + chunk.request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        out = [sse(event)]
        if chunk.finish_reason is not None and self.include_usage:
            out.append(sse({**event, "choices": [], "usage": _usage(chunk)}))
        return out


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def models_response(model: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "tandem"}],
    }
