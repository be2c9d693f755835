"""Turning a gRPC GenerateRequest into engine input, or refusing it with a precise reason.

Plain logic (no Ray, no vLLM): the coordinator calls `prepare` before anything reaches a replica,
so a bad request never costs engine time and its error names the field to fix.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from tandem.protos import tandem_pb2 as pb
from tandem.protos.modes import mode_of

CHAT_ROLES = ("system", "user", "assistant")
MAX_REQUEST_ID_LEN = 256


class RequestError(ValueError):
    """A request the server refuses; `code` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # picklable (Ray, Serve), though __init__ takes two arguments
        return type(self), (self.code, str(self))


def invalid(message: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", message)


def out_of_range(message: str) -> RequestError:
    return RequestError("OUT_OF_RANGE", message)


@dataclass(frozen=True)
class Limits:
    """What the model and the server config allow."""

    max_model_len: int
    vocab_size: int
    max_tokens: int
    default_max_tokens: int
    modes: tuple[str, ...] = ("off",)  # the speculation modes the deployment offers
    default_mode: str = "off"
    num_speculative_tokens: int = 0  # the default k, and the largest a request may ask
    sampled_requests: bool = False  # speculation for requests with temperature > 0
    pipelined: bool = False  # pre-draft while the target verifies, unless a request says not


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]  # keyword arguments of vllm.SamplingParams
    mode: str = "off"  # speculation mode
    num_speculative_tokens: int = 0  # the request's k
    pipelined: bool = False


def prepare(request: pb.GenerateRequest, tokenizer: Any, limits: Limits) -> PreparedRequest:
    request_id = request.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID_LEN:
        raise invalid(f"request_id: at most {MAX_REQUEST_ID_LEN} characters")
    prompt = prompt_token_ids(request, tokenizer, limits.vocab_size)
    if len(prompt) >= limits.max_model_len:
        raise out_of_range(
            f"prompt: {len(prompt)} tokens leave no room in the model's context of "
            f"{limits.max_model_len} tokens; shorten the prompt"
        )
    sampling = sampling_kwargs(request.sampling, limits, room=limits.max_model_len - len(prompt))
    mode, k = speculation(request.speculation, limits)
    if sampling["temperature"] > 0 and not limits.sampled_requests:
        mode, k = "off", 0
    pipelined = (
        request.speculation.pipelined
        if request.speculation.HasField("pipelined")
        else limits.pipelined
    )
    return PreparedRequest(request_id, prompt, sampling, mode, k, pipelined)


def speculation(params: pb.SpeculationParams, limits: Limits) -> tuple[str, int]:
    """The request's (mode, k): its own choice, or the deployment's defaults."""
    if params.mode == pb.SPECULATION_MODE_UNSPECIFIED:
        mode = limits.default_mode
    elif params.mode not in pb.SpeculationMode.values():
        raise invalid(f"speculation.mode: unknown value {params.mode}")
    else:
        mode = mode_of(params.mode)
        if mode not in limits.modes:
            raise invalid(
                f"speculation.mode: {mode!r} is not provisioned by this deployment; "
                f"available: {', '.join(limits.modes)}"
            )
    k = limits.num_speculative_tokens
    if params.HasField("num_speculative_tokens"):
        k = params.num_speculative_tokens
        if not 0 <= k <= limits.num_speculative_tokens:
            raise out_of_range(
                f"speculation.num_speculative_tokens: {k} is outside "
                f"[0, {limits.num_speculative_tokens}] (speculation.num_speculative_tokens)"
            )
    return (mode, k) if mode != "off" and k > 0 else ("off", 0)


def prompt_token_ids(request: pb.GenerateRequest, tokenizer: Any, vocab_size: int) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise invalid("prompt: set one of text, token_ids or chat")
    if kind == "text":
        if not request.text:
            raise invalid("prompt.text: empty prompt")
        return tokenizer.encode(request.text)
    if kind == "token_ids":
        ids = list(request.token_ids.ids)
        if not ids:
            raise invalid("prompt.token_ids: empty prompt")
        for i, token in enumerate(ids):
            if not 0 <= token < vocab_size:
                raise out_of_range(
                    f"prompt.token_ids[{i}]: {token} is outside the vocabulary [0, {vocab_size})"
                )
        return ids
    return render_chat(request.chat, tokenizer)


def render_chat(chat: pb.ChatMessages, tokenizer: Any) -> list[int]:
    if not chat.messages:
        raise invalid("prompt.chat.messages: empty conversation")
    for i, message in enumerate(chat.messages):
        if message.role not in CHAT_ROLES:
            raise invalid(
                f"prompt.chat.messages[{i}].role: unknown role {message.role!r}; "
                f"use one of {', '.join(CHAT_ROLES)}"
            )
    if tokenizer.chat_template is None:
        raise invalid("prompt.chat: the model has no chat template; send text or token_ids")
    messages = [{"role": m.role, "content": m.content} for m in chat.messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def sampling_kwargs(params: pb.SamplingParams, limits: Limits, room: int) -> dict[str, Any]:
    """Validated vllm.SamplingParams keyword arguments; `room` is the context left after the
    prompt, which an unset max_tokens is clamped to."""
    out: dict[str, Any] = {"temperature": 1.0}
    if params.HasField("temperature"):
        if not math.isfinite(params.temperature) or params.temperature < 0:
            raise invalid(
                f"sampling.temperature: must be finite and >= 0, got {params.temperature}"
            )
        out["temperature"] = params.temperature
    if params.HasField("top_p"):
        if not (math.isfinite(params.top_p) and 0 < params.top_p <= 1):
            raise invalid(f"sampling.top_p: must be in (0, 1], got {params.top_p}")
        out["top_p"] = params.top_p
    if params.HasField("top_k"):
        if params.top_k < -1:
            raise invalid(f"sampling.top_k: must be >= 0 (0 or -1 disables), got {params.top_k}")
        out["top_k"] = params.top_k if params.top_k > 0 else 0
    if params.HasField("seed"):
        out["seed"] = params.seed
    out["max_tokens"] = max_tokens(params, limits, room)
    for i, stop in enumerate(params.stop):
        if not stop:
            raise invalid(f"sampling.stop[{i}]: empty stop string")
    if params.stop:
        out["stop"] = list(params.stop)
    for i, token in enumerate(params.stop_token_ids):
        if not 0 <= token < limits.vocab_size:
            raise out_of_range(
                f"sampling.stop_token_ids[{i}]: {token} is outside the vocabulary "
                f"[0, {limits.vocab_size})"
            )
    if params.stop_token_ids:
        out["stop_token_ids"] = list(params.stop_token_ids)
    out["ignore_eos"] = params.ignore_eos
    return out


def max_tokens(params: pb.SamplingParams, limits: Limits, room: int) -> int:
    if not params.HasField("max_tokens"):
        return min(limits.default_max_tokens, room)
    value = params.max_tokens
    if value <= 0:
        raise invalid(f"sampling.max_tokens: must be > 0, got {value}")
    if value > limits.max_tokens:
        raise out_of_range(
            f"sampling.max_tokens: {value} exceeds the server's limit of {limits.max_tokens}"
        )
    if value > room:
        raise out_of_range(
            f"sampling.max_tokens: {value} new tokens do not fit the model's context "
            f"({limits.max_model_len} tokens, {room} left after the prompt)"
        )
    return value
