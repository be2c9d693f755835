"""Turning a gRPC GenerateRequest into engine input, or refusing it with a precise reason.

Plain logic (no Ray, no vLLM): the coordinator calls `prepare` before anything reaches a replica,
so a bad request never costs engine time and its error names the field to fix.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from tandem.cluster.transport.messages import PreparedRequest, RequestError
from tandem.protos import tandem_pb2 as pb
from tandem.protos.modes import mode_of

CHAT_ROLES = ("system", "user", "assistant")
MAX_REQUEST_ID_LEN = 256
# vLLM's limits (vllm.SamplingParams, ModelConfig.max_logprobs' default).
MAX_TEMPERATURE = 2.0
MAX_LOGPROBS = 20


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
    min_p: bool = True  # whether the engine applies min_p (speculation.sampler)
    pipelined: bool = False  # pre-draft while the target verifies, unless a request says not
    # Prompt text longer than this cannot fit max_model_len tokens (see max_prompt_chars);
    # None: no bound known for this tokenizer.
    max_prompt_chars: int | None = None
    speculative_engine: bool = False  # the engine runs with a speculative config (any mode)


def prepare(request: pb.GenerateRequest, tokenizer: Any, limits: Limits) -> PreparedRequest:
    request_id = request.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID_LEN:
        raise invalid(f"request_id: at most {MAX_REQUEST_ID_LEN} characters")
    prompt = prompt_token_ids(request, tokenizer, limits)
    if len(prompt) >= limits.max_model_len:
        raise out_of_range(
            f"prompt: {len(prompt)} tokens leave no room in the model's context of "
            f"{limits.max_model_len} tokens; shorten the prompt"
        )
    sampling = sampling_kwargs(request.sampling, limits, room=limits.max_model_len - len(prompt))
    mode, k = speculation(request.speculation, limits)
    if sampling.get("min_tokens"):
        # vLLM applies min_tokens to the token it samples, not to verified drafts (its
        # rejection sampler skips that logits processor): without drafts it holds exactly.
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


def max_prompt_chars(tokenizer: Any, max_model_len: int) -> int | None:
    """The longest text that may still fit the context: each token covers at most as many
    characters as its vocabulary entry is long (byte-level and SentencePiece vocabularies), so
    a longer text is refused before any tokenizing. None when a normalizer could shrink text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    return max_model_len * max(len(token) for token in tokenizer.get_vocab())


def _check_length(chars: int, field: str, limits: Limits) -> None:
    if limits.max_prompt_chars is not None and chars > limits.max_prompt_chars:
        raise out_of_range(
            f"{field}: {chars} characters cannot fit the model's context of "
            f"{limits.max_model_len} tokens; shorten the prompt"
        )


def prompt_token_ids(request: pb.GenerateRequest, tokenizer: Any, limits: Limits) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise invalid("prompt: set one of text, token_ids or chat")
    if kind == "text":
        if not request.text:
            raise invalid("prompt.text: empty prompt")
        _check_length(len(request.text), "prompt.text", limits)
        ids = tokenizer.encode(request.text)
        if not ids:  # control characters alone, say: nothing for the model to read
            raise invalid("prompt.text: the text encodes to no tokens")
        return ids
    if kind == "token_ids":
        ids = list(request.token_ids.ids)
        if not ids:
            raise invalid("prompt.token_ids: empty prompt")
        vocab_size = limits.vocab_size
        for i, token in enumerate(ids):
            if not 0 <= token < vocab_size:
                raise out_of_range(
                    f"prompt.token_ids[{i}]: {token} is outside the vocabulary [0, {vocab_size})"
                )
        return ids
    return render_chat(request.chat, tokenizer, limits)


def render_chat(chat: pb.ChatMessages, tokenizer: Any, limits: Limits | None = None) -> list[int]:
    """The chat's prompt tokens; with `limits`, a chat that cannot fit the context is refused
    before it is rendered."""
    if not chat.messages:
        raise invalid("prompt.chat.messages: empty conversation")
    if limits is not None:
        if len(chat.messages) >= limits.max_model_len:  # each message renders to own tokens
            raise out_of_range(
                f"prompt.chat.messages: {len(chat.messages)} messages cannot fit the model's "
                f"context of {limits.max_model_len} tokens"
            )
        _check_length(
            sum(len(m.content) + len(m.name) for m in chat.messages), "prompt.chat", limits
        )
    for i, message in enumerate(chat.messages):
        if message.role not in CHAT_ROLES:
            raise invalid(
                f"prompt.chat.messages[{i}].role: unknown role {message.role!r}; "
                f"use one of {', '.join(CHAT_ROLES)}"
            )
    if tokenizer.chat_template is None:
        raise invalid("prompt.chat: the model has no chat template; send text or token_ids")
    messages = [
        {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
        for m in chat.messages
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def sampling_kwargs(params: pb.SamplingParams, limits: Limits, room: int) -> dict[str, Any]:
    """Validated vllm.SamplingParams keyword arguments, with vLLM's ranges; `room` is the context
    left after the prompt, which an unset max_tokens is clamped to."""
    out: dict[str, Any] = {"temperature": 1.0}
    if params.HasField("temperature"):
        if not (math.isfinite(params.temperature) and 0 <= params.temperature <= MAX_TEMPERATURE):
            raise invalid(
                f"sampling.temperature: must be in [0, {MAX_TEMPERATURE}], got {params.temperature}"
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
        _in_vocabulary(f"sampling.stop_token_ids[{i}]", token, limits)
    if params.stop_token_ids:
        out["stop_token_ids"] = list(params.stop_token_ids)
    out["ignore_eos"] = params.ignore_eos
    out.update(_penalties(params))
    out.update(_constraints(params, limits, out["max_tokens"], out["temperature"]))
    out.update(_logprobs(params))
    if params.include_stop_str_in_output:
        out["include_stop_str_in_output"] = True
    if params.HasField("skip_special_tokens"):
        out["skip_special_tokens"] = params.skip_special_tokens
    out.update(_structured(params))
    return out


def _structured(params: pb.SamplingParams) -> dict[str, Any]:
    """structured_outputs as the keyword arguments of vLLM's StructuredOutputsParams (plain
    values: they cross Ray). What only vLLM can check (a schema or grammar xgrammar cannot
    compile) is refused as the target adds the request, as INVALID_ARGUMENT too."""
    if not params.HasField("structured_outputs"):
        return {}
    constraint = params.structured_outputs
    kind = constraint.WhichOneof("kind")
    name = "sampling.structured_outputs"
    if kind is None:
        raise invalid(f"{name}: set one of json, json_object, regex, choice, grammar")
    if kind == "json":
        try:
            schema = json.loads(constraint.json)
        except (ValueError, RecursionError) as exc:
            raise invalid(f"{name}.json: not valid JSON ({exc})") from None
        if not isinstance(schema, dict):
            raise invalid(f"{name}.json: a JSON schema is an object")
        return {"structured_outputs": {"json": schema}}
    if kind == "choice":
        choices = list(constraint.choice.values)
        if not choices or not all(choices):
            raise invalid(f"{name}.choice: one or more non-empty strings")
        return {"structured_outputs": {"choice": choices}}
    value = getattr(constraint, kind)
    if kind == "json_object" and not value:
        raise invalid(f"{name}.json_object: true when set (leave it unset for no constraint)")
    if kind in ("regex", "grammar") and not value.strip():
        raise invalid(f"{name}.{kind}: empty")
    return {"structured_outputs": {kind: value}}


def _in_range(params: pb.SamplingParams, names: tuple[str, ...], low, high) -> dict[str, Any]:
    """The set fields among `names`, each refused unless in [low, high]."""
    out = {}
    for name in names:
        if params.HasField(name):
            value = getattr(params, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise invalid(f"sampling.{name}: must be in [{low}, {high}], got {value}")
            out[name] = value
    return out


def _penalties(params: pb.SamplingParams) -> dict[str, float]:
    out = _in_range(params, ("presence_penalty", "frequency_penalty"), -2, 2)
    if params.HasField("repetition_penalty"):
        value = params.repetition_penalty
        if not (math.isfinite(value) and value > 0):
            raise invalid(f"sampling.repetition_penalty: must be > 0, got {value}")
        out["repetition_penalty"] = value
    return out


def _constraints(
    params: pb.SamplingParams, limits: Limits, max_new: int, temperature: float
) -> dict[str, Any]:
    """min_p, min_tokens and logit_bias. vLLM refuses min_p and logit_bias while it speculates
    (vllm.SamplingParams._validate_spec_decode); tandem's exact sampler applies min_p at every
    position (speculation.sampler), so only logit_bias is refused, and min_p where the deployment
    keeps vLLM's own sampler. Greedy decoding ignores min_p, as in vLLM (which resets it for
    temperature 0)."""
    out: dict[str, Any] = {}
    speculating = "while the deployment speculates (vLLM does not support it with drafts)"
    if params.HasField("min_p"):
        if not (math.isfinite(params.min_p) and 0 <= params.min_p <= 1):
            raise invalid(f"sampling.min_p: must be in [0, 1], got {params.min_p}")
        if params.min_p > 0 and not limits.min_p and temperature > 0:
            raise invalid(
                f"sampling.min_p: not supported {speculating}; this deployment sets "
                "speculation.sampler.kind: vllm"
            )
        out["min_p"] = params.min_p
    if params.HasField("min_tokens"):
        if not 0 <= params.min_tokens <= max_new:
            raise invalid(
                f"sampling.min_tokens: must be in [0, max_tokens={max_new}], "
                f"got {params.min_tokens}"
            )
        out["min_tokens"] = params.min_tokens
    if params.logit_bias:
        if limits.speculative_engine:
            raise invalid(f"sampling.logit_bias: not supported {speculating}")
        for token, bias in params.logit_bias.items():
            _in_vocabulary(f"sampling.logit_bias[{token}]", token, limits)
            if not math.isfinite(bias):
                raise invalid(f"sampling.logit_bias[{token}]: must be finite, got {bias}")
        # vLLM's OpenAI server clamps biases to OpenAI's range; so does tandem.
        out["logit_bias"] = {t: min(100.0, max(-100.0, b)) for t, b in params.logit_bias.items()}
    return out


def _logprobs(params: pb.SamplingParams) -> dict[str, int]:
    return _in_range(params, ("logprobs", "prompt_logprobs"), 0, MAX_LOGPROBS)


def _in_vocabulary(field: str, token: int, limits: Limits) -> None:
    if not 0 <= token < limits.vocab_size:
        raise out_of_range(f"{field}: {token} is outside the vocabulary [0, {limits.vocab_size})")


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


# ---- JSON values into protobuf fields (the OpenAI API), typed and ranged before protobuf ------

_INT_RANGES = {
    "TYPE_INT32": (-(2**31), 2**31 - 1),
    "TYPE_INT64": (-(2**63), 2**63 - 1),
    "TYPE_UINT32": (0, 2**32 - 1),
    "TYPE_UINT64": (0, 2**64 - 1),
}


_TYPE_NAMES = {
    getattr(pb.SamplingParams.DESCRIPTOR.fields[0], name): name
    for name in ("TYPE_BOOL", "TYPE_STRING", "TYPE_FLOAT", "TYPE_DOUBLE", *_INT_RANGES)
}


def assign(message: Any, name: str, value: Any, param: str) -> None:
    """Set `message.name` from a JSON value, or refuse it naming `param` (the caller's name for
    the field): the type must be the field's and an integer must fit it, so protobuf never sees
    a value it would reject with a TypeError or an overflow. Ranges that depend on the model or
    the server are checked by `prepare`, for gRPC and HTTP alike."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, val = field.message_type.fields
        if not isinstance(value, dict):
            raise invalid(f"{param}: expected an object, got {_json_type(value)}")
        target = getattr(message, name)
        for k, v in value.items():
            try:
                token = int(k)
            except ValueError:
                raise invalid(f"{param}: key {k!r} is not an integer") from None
            _check_scalar(key, token, f"{param}[{k}]")
            _check_scalar(val, v, f"{param}[{k}]")
            target[token] = v
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise invalid(f"{param}: expected a list, got {_json_type(value)}")
        for i, item in enumerate(value):
            _check_scalar(field, item, f"{param}[{i}]")
        getattr(message, name).extend(value)
        return
    _check_scalar(field, value, param)
    setattr(message, name, value)


def _check_scalar(field: Any, value: Any, param: str) -> None:
    kind = _TYPE_NAMES.get(field.type)
    if kind == "TYPE_BOOL":
        ok, expected = isinstance(value, bool), "a boolean"
    elif kind == "TYPE_STRING":
        ok, expected = isinstance(value, str), "a string"
    elif kind in ("TYPE_FLOAT", "TYPE_DOUBLE"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    elif kind in _INT_RANGES:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
        if ok and not _INT_RANGES[kind][0] <= value <= _INT_RANGES[kind][1]:
            low, high = _INT_RANGES[kind]
            raise invalid(f"{param}: {value} is outside [{low}, {high}]")
    else:  # not a field the JSON APIs set
        raise TypeError(f"unsupported field type {kind}")
    if not ok:
        raise invalid(f"{param}: expected {expected}, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
