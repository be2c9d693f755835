"""OpenAI request bodies to GenerateRequests, as vLLM's OpenAI server reads them.

Every request field tandem knows is either honoured with vLLM's semantics or refused with a 400
naming it; a field it does not know is ignored, as vLLM's server ignores it, and named in the
answer's `tandem-ignored-fields` header and the log (openai_app.py), so nothing is dropped
silently. Types and integer widths are checked before protobuf sees a value
(tandem.cluster.frontdoor.requests.assign); ranges, by the same validation as the gRPC API
(`prepare`). Plain logic (no Serve, no Ray): the OpenAI app (openai_app.py) routes HTTP here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tandem.cluster.frontdoor.requests import MAX_LOGPROBS, assign, invalid
from tandem.cluster.transport.messages import RequestError
from tandem.protos import tandem_pb2 as pb
from tandem.protos.modes import proto_mode
from tandem.speculation.protocol import Mode

# tandem's own extra field, as in the gRPC API (what a deployment provisions is checked there).
SPECULATION_MODES = tuple(m.value for m in Mode)

# Sampling fields passed through under the same name (vLLM's extra parameters included).
SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
    "logit_bias",
    "stop_token_ids",
    "ignore_eos",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "prompt_logprobs",
)
# Fields tandem reads itself (besides SAMPLING), per endpoint.
HANDLED = {
    "model",
    "n",
    "max_tokens",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "request_id",
    "user",  # an end-user tag (OpenAI: abuse monitoring); generation ignores it, as vLLM does
    "speculation",
    "num_speculative_tokens",
    "pipelined",
    "response_format",  # text, json_object, json_schema: structured outputs
    "structured_outputs",  # vLLM's form of the same
}
HANDLED_CHAT = HANDLED | {"messages", "max_completion_tokens", "top_logprobs"}
MESSAGE_KEYS = {"role", "content", "name"}
HANDLED_COMPLETION = HANDLED | {"prompt"}
# Fields accepted only at their default where the default differs per endpoint (vLLM's).
ENDPOINT_DEFAULTS_ONLY = {
    True: {"add_special_tokens": False},  # chat: the template writes the special tokens
    False: {"add_special_tokens": True},  # completions: the tokenizer adds them
}
# Fields tandem accepts only at their default (OpenAI's, or vLLM's for its extra parameters):
# any other value is refused with a 400 naming the field.
DEFAULTS_ONLY = {
    "echo": False,
    "suffix": None,
    "tools": None,
    "tool_choice": "none",
    "functions": None,
    "function_call": "none",
    "parallel_tool_calls": True,
    "reasoning_effort": None,
    "include_reasoning": True,
    "use_beam_search": False,
    "length_penalty": 1.0,
    "watermarking": None,
    "truncate_prompt_tokens": None,
    "truncation_side": None,
    "allowed_token_ids": None,
    "logprob_token_ids": None,
    "bad_words": [],
    "prompt_embeds": None,
    "spaces_between_special_tokens": True,
    "add_generation_prompt": True,
    "continue_final_message": False,
    "documents": None,
    "chat_template": None,
    "chat_template_kwargs": None,
    "media_io_kwargs": None,
    "mm_processor_kwargs": None,
    "mm_payload": "tensors",
    "priority": 0,
    "session_id": None,
    "return_tokens_as_token_ids": False,
    "return_token_ids": False,
    "return_token_offsets": False,
    "return_prompt_text": False,
    "return_mm_kwargs": False,
    "routed_experts_prompt_start": 0,
    "cache_salt": None,
    "kv_transfer_params": None,
    "ec_transfer_params": None,
    "vllm_xargs": None,
    "repetition_detection": None,
    "thinking_token_budget": None,
    "stream_interval": 1,
    "store": False,
    "metadata": None,
    "service_tier": None,
    "modalities": None,
    "prediction": None,
    "audio": None,
    "web_search_options": None,
}


@dataclass
class OpenAIRequest:
    """A parsed OpenAI request: `n` GenerateRequests (one per choice) and how to answer."""

    requests: list[pb.GenerateRequest]
    chat: bool
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top entries per token in the answer (None: no logprobs)
    ignored: list[str] = field(default_factory=list)  # unknown fields, ignored as vLLM does


def parse(body: Any, model: str, chat: bool) -> OpenAIRequest:
    """/v1/chat/completions (messages rendered with the chat template) or /v1/completions (a
    text prompt, or one list of token ids, raw) into one GenerateRequest per choice."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    ignored = _check_fields(body, chat)
    if body.get("model") not in (None, model):
        raise RequestError("NOT_FOUND", f"model: {body['model']!r} is not served; use {model!r}")
    request = pb.GenerateRequest()
    if chat:
        ignored += chat_prompt(body, request)
    else:
        _completion_prompt(body, request)
    _sampling(body, request.sampling, chat)
    _structured(body, request.sampling)
    _tandem_extras(body, request)
    if body.get("request_id") is not None:
        assign(request, "request_id", body["request_id"], "request_id")
    logprobs = _logprobs(body, request.sampling, chat)
    parsed = OpenAIRequest([request], chat, logprobs=logprobs, ignored=ignored)
    _stream_options(body, parsed)
    return _choices(body, parsed)


def _check_fields(body: dict[str, Any], chat: bool) -> list[str]:
    """The unknown fields (ignored); a known one tandem cannot honour at its value is refused."""
    handled = HANDLED_CHAT if chat else HANDLED_COMPLETION
    defaults_only = DEFAULTS_ONLY | ENDPOINT_DEFAULTS_ONLY[chat]
    ignored = []
    for name, value in body.items():
        if name in handled or name in SAMPLING:
            continue
        if name not in defaults_only:
            ignored.append(name)
            continue
        default = defaults_only[name]
        if value is not None and value != default:
            raise invalid(f"{name}: not supported by tandem (only {json.dumps(default)})")
    return ignored


def _completion_prompt(body: dict[str, Any], request: pb.GenerateRequest) -> None:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        request.text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        assign(request.token_ids, "ids", prompt, "prompt")
    else:
        raise invalid("prompt: a string or a list of token ids (one prompt per request)")


def chat_prompt(body: dict[str, Any], request: pb.GenerateRequest) -> list[str]:
    """The messages into `request.chat`; returns the message keys it ignores (unknown ones)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages: a list of {role, content} objects")
    ignored = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]: an object with role and content")
        ignored += [f"messages[{i}].{key}" for key in message if key not in MESSAGE_KEYS]
        role = message.get("role")
        if not isinstance(role, str):
            raise invalid(f"messages[{i}].role: expected a string")
        added = request.chat.messages.add(role=role, content=_content(message.get("content"), i))
        if message.get("name") is not None:
            assign(added, "name", message["name"], f"messages[{i}].name")
    return ignored


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or a list of text parts (OpenAI's content-part form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise invalid(f"messages[{i}].content: a string or a list of text parts")


def _sampling(body: dict[str, Any], sampling: pb.SamplingParams, chat: bool) -> None:
    for name in SAMPLING:
        if body.get(name) is not None:
            assign(sampling, name, body[name], name)
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        if body.get(name) is not None:
            assign(sampling, "max_tokens", body[name], name)
            break
    stop = body.get("stop")
    if stop is not None:
        assign(sampling, "stop", [stop] if isinstance(stop, str) else stop, "stop")


# vLLM's structured_outputs object: one constraint, the rest at their defaults.
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")
CONSTRAINT_DEFAULTS = {
    "disable_any_whitespace": False,
    "disable_additional_properties": False,
    "whitespace_pattern": None,
    "structural_tag": None,
}


def _structured(body: dict[str, Any], sampling: pb.SamplingParams) -> None:
    """response_format (OpenAI's: text, json_object, json_schema) or vLLM's structured_outputs
    into sampling.structured_outputs; the engine then constrains drafted positions as well."""
    response_format, extra = body.get("response_format"), body.get("structured_outputs")
    if response_format is not None and extra is not None:
        raise invalid("structured_outputs: set response_format or structured_outputs, not both")
    constraint = sampling.structured_outputs
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            constraint.json_object = True
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise invalid("response_format: json_schema.schema must be a JSON schema object")
            constraint.json = json.dumps(schema)
        elif kind != "text":
            raise invalid("response_format: type is one of text, json_object, json_schema")
        return
    if extra is None:
        return
    if not isinstance(extra, dict):
        raise invalid("structured_outputs: an object with one of " + ", ".join(CONSTRAINTS))
    for key, value in extra.items():
        if key in CONSTRAINTS:
            continue
        if key not in CONSTRAINT_DEFAULTS:
            raise invalid(f"structured_outputs: unknown key {key!r}")
        if value is not None and value != CONSTRAINT_DEFAULTS[key]:
            raise invalid(f"structured_outputs: {key} is not supported by tandem")
    chosen = [k for k in CONSTRAINTS if extra.get(k) is not None]
    if len(chosen) != 1:
        raise invalid("structured_outputs: exactly one of " + ", ".join(CONSTRAINTS))
    (kind,) = chosen
    value = extra[kind]
    if kind == "json":
        constraint.json = value if isinstance(value, str) else json.dumps(value)
    elif kind == "choice":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid("structured_outputs: choice is a list of strings")
        constraint.choice.values.extend(value)
    else:
        assign(constraint, kind, value, f"structured_outputs.{kind}")


def _logprobs(body: dict[str, Any], sampling: pb.SamplingParams, chat: bool) -> int | None:
    """Chat: `logprobs` (bool) and `top_logprobs`; completions: `logprobs` (int), as vLLM."""
    logprobs = body.get("logprobs")
    if chat:
        top = body.get("top_logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise invalid(f"logprobs: expected a boolean, got {logprobs!r}")
        if top and not logprobs:
            raise invalid("top_logprobs: needs logprobs: true")
        if not logprobs:
            return None
        assign(sampling, "logprobs", 0 if top is None else top, "top_logprobs")
    else:
        if logprobs is None:
            return None
        assign(sampling, "logprobs", logprobs, "logprobs")
    if not 0 <= sampling.logprobs <= MAX_LOGPROBS:
        raise invalid(
            f"{'top_logprobs' if chat else 'logprobs'}: must be in [0, {MAX_LOGPROBS}], "
            f"got {sampling.logprobs}"
        )
    return sampling.logprobs


def _tandem_extras(body: dict[str, Any], request: pb.GenerateRequest) -> None:
    mode = body.get("speculation")
    if mode is not None:
        if mode not in SPECULATION_MODES:
            raise invalid(f"speculation: one of {', '.join(SPECULATION_MODES)}, got {mode!r}")
        request.speculation.mode = proto_mode(mode)
    for name in ("num_speculative_tokens", "pipelined"):
        if body.get(name) is not None:
            assign(request.speculation, name, body[name], name)


def _stream_options(body: dict[str, Any], parsed: OpenAIRequest) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid(f"stream: expected a boolean, got {stream!r}")
    parsed.stream = bool(stream)
    if parsed.stream and body.get("prompt_logprobs"):
        raise invalid("prompt_logprobs: not available with stream: true (as in vLLM)")
    options = body.get("stream_options")
    if options is None:
        return
    if not parsed.stream:
        raise invalid("stream_options: only with stream: true")
    if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
        raise invalid("stream_options: an object with include_usage")
    if options.get("continuous_usage_stats"):
        raise invalid("stream_options.continuous_usage_stats: not supported by tandem")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise invalid(f"stream_options.include_usage: expected a boolean, got {include!r}")
    parsed.include_usage = include


def _choices(body: dict[str, Any], parsed: OpenAIRequest) -> OpenAIRequest:
    """n choices, as vLLM's parallel sampling makes them: independent requests, the i-th with
    seed + i when a seed is set, ids `{i}_{request_id}`."""
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise invalid(f"n: must be an integer >= 1, got {n!r}")
    if n == 1:
        return parsed
    (request,) = parsed.requests
    if request.sampling.HasField("temperature") and request.sampling.temperature < 1e-5:
        raise invalid(f"n: must be 1 when using greedy sampling (temperature 0), got {n}")
    if request.sampling.HasField("seed") and request.sampling.seed + n >= 2**64:
        raise invalid(f"seed: {request.sampling.seed} + n does not fit 64 bits")
    parsed.requests = []
    for i in range(n):
        child = pb.GenerateRequest()
        child.CopyFrom(request)
        if request.request_id:
            child.request_id = f"{i}_{request.request_id}"
        if request.sampling.HasField("seed"):
            child.sampling.seed = request.sampling.seed + i
        parsed.requests.append(child)
    return parsed
