"""The endpoints vLLM's OpenAI server has besides completions: the served model
(/v1/models), its tokenizer (/tokenize, /detokenize) and the version (/version).

Completions themselves are read by openai_requests.py and answered by openai_responses.py.
Plain logic (no Serve, no Ray): the OpenAI app (openai_app.py) routes HTTP here.
"""

from __future__ import annotations

from typing import Any

from tandem.cluster.frontdoor.openai_requests import chat_prompt
from tandem.cluster.frontdoor.requests import assign, invalid, render_chat
from tandem.cluster.transport.messages import RequestError
from tandem.protos import tandem_pb2 as pb


def model_card(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "tandem",
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
    }


def models_response(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(model, created, max_model_len)]}


def tokenize(body: Any, model: str, tokenizer: Any, max_model_len: int) -> dict[str, Any]:
    """vLLM's /tokenize: a `prompt`, or chat `messages` rendered with the template."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    allowed = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"}
    allowed |= {"return_token_strs"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(f"{unknown[0]}: unknown field")
    if body.get("model") not in (None, model):
        raise RequestError("NOT_FOUND", f"model: {body['model']!r} is not served; use {model!r}")
    for name in ("add_special_tokens", "add_generation_prompt", "return_token_strs"):
        if name in body and not isinstance(body[name], bool):
            raise invalid(f"{name}: expected a boolean")
    if ("prompt" in body) == ("messages" in body):
        raise invalid("prompt: set one of prompt and messages")
    if "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise invalid("prompt: expected a string")
        tokens = tokenizer.encode(
            body["prompt"], add_special_tokens=body.get("add_special_tokens", True)
        )
    else:
        if not body.get("add_generation_prompt", True) or body.get("add_special_tokens"):
            raise invalid("add_generation_prompt: tandem renders chat as generation does")
        request = pb.GenerateRequest()
        if ignored := chat_prompt(body, request):
            raise invalid(f"{ignored[0]}: unknown field")
        tokens = render_chat(request.chat, tokenizer)
    strs = tokenizer.convert_ids_to_tokens(tokens) if body.get("return_token_strs") else None
    return {
        "count": len(tokens),
        "max_model_len": max_model_len,
        "tokens": tokens,
        "token_strs": strs,
    }


def detokenize(body: Any, model: str, tokenizer: Any, vocab_size: int) -> dict[str, str]:
    """vLLM's /detokenize: token ids to text."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    unknown = sorted(set(body) - {"model", "tokens"})
    if unknown:
        raise invalid(f"{unknown[0]}: unknown field")
    if body.get("model") not in (None, model):
        raise RequestError("NOT_FOUND", f"model: {body['model']!r} is not served; use {model!r}")
    ids = pb.TokenIds()
    assign(ids, "ids", body.get("tokens"), "tokens")
    for i, token in enumerate(ids.ids):
        if not 0 <= token < vocab_size:
            raise invalid(f"tokens[{i}]: {token} is outside the vocabulary [0, {vocab_size})")
    return {"prompt": tokenizer.decode(list(ids.ids))}


def version() -> dict[str, str]:
    from importlib.metadata import version as package_version

    return {"version": package_version("tandem")}
