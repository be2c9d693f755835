"""Hypothesis strategies for requests a client may send, valid or not, and the checks every
answer must pass: a valid generation or a clear status, never INTERNAL or UNKNOWN (gRPC) and
never a 5xx (HTTP). Used by the fuzz tests of the gRPC server and of the OpenAI HTTP API.

The space includes mixed sampling settings in one batch (greedy, temperature with top_k and
top_p, seeds) beside requests that speculate in every mode, and prompts of a single token."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tandem.protos import tandem_pb2 as pb

VOCAB = 49152
# Codes a client may get for what it sent (or for sending too much at once); never INTERNAL.
CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
}


def fuzz_settings(examples: int) -> settings:
    """Settings for fuzzing a live server: no deadline per example (the engine is slow on a
    loaded CPU), no example database, no health checks about speed."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# ---- gRPC ------------------------------------------------------------------------------------

FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, 2.0001, -1.0, 1e-9]),
    st.floats(width=32),
)
TEXT = st.text(max_size=48)
# Mostly cheap requests (a few tokens), some beyond every limit.
MAX_TOKENS = st.one_of(st.integers(-2, 8), st.integers(-(2**31), 2**31 - 1))


@st.composite
def sampling(draw) -> pb.SamplingParams:
    params = pb.SamplingParams(
        stop=draw(st.lists(st.text(max_size=3), max_size=2)),
        stop_token_ids=draw(st.lists(st.integers(-3, VOCAB + 3), max_size=2)),
        ignore_eos=draw(st.booleans()),
    )
    kind = draw(st.sampled_from(["greedy", "sampled", "anything"]))
    if kind == "greedy":
        params.temperature = 0.0
    elif kind == "sampled":  # what broke vLLM's rejection sampler beside drafts
        params.temperature = draw(st.sampled_from([0.7, 1.0, 2.0]))
        params.top_k = draw(st.sampled_from([1, 5, 40, 1000, VOCAB, VOCAB + 1]))
        params.top_p = draw(st.sampled_from([0.1, 0.9, 1.0]))
    else:
        for name, strategy in (("temperature", FLOATS), ("top_p", FLOATS)):
            if draw(st.booleans()):
                setattr(params, name, draw(strategy))
        if draw(st.booleans()):
            params.top_k = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        params.seed = draw(st.integers(0, 2**64 - 1))
    max_tokens = draw(st.none() | MAX_TOKENS)
    if max_tokens is not None:
        params.max_tokens = max_tokens
    return params


@st.composite
def generate_request(draw) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        sampling=draw(sampling()),
        request_id=draw(st.sampled_from(["", "", "", "same-id", "x" * 300]) | st.text(max_size=8)),
    )
    kind = draw(st.sampled_from(["text", "token_ids", "one_token", "chat", "none"]))
    if kind == "text":
        request.text = draw(TEXT)
    elif kind == "token_ids":
        request.token_ids.ids.extend(draw(st.lists(st.integers(-3, VOCAB + 3), max_size=24)))
    elif kind == "one_token":  # the prompt vLLM pads with placeholder drafts
        request.token_ids.ids.append(draw(st.integers(0, VOCAB - 1)))
    elif kind == "chat":
        for role, content in draw(
            st.lists(st.tuples(st.sampled_from(["user", "system", "assistant", "robot"]), TEXT))
        ):
            request.chat.messages.add(role=role, content=content)
    if draw(st.booleans()):
        request.speculation.mode = draw(st.integers(0, 9))  # 7: controlled; 8, 9: unknown
    if draw(st.booleans()):
        request.speculation.num_speculative_tokens = draw(st.integers(-2, 6))
    if draw(st.booleans()):
        request.speculation.pipelined = draw(st.booleans())
    return request


# A call: which RPC, and the request (or raw bytes that may not parse at all).
grpc_call = st.one_of(
    st.tuples(st.sampled_from(["Generate", "GenerateStream"]), generate_request()),
    st.tuples(st.sampled_from(["Generate", "GenerateStream"]), st.binary(max_size=48)),
)


async def send(channel: grpc.aio.Channel, method: str, request: Any, timeout: float) -> Any:
    """One call with a deadline; returns the responses (a list) or the RpcError."""
    raw = isinstance(request, bytes)
    serializer = None if raw else pb.GenerateRequest.SerializeToString
    path = f"/tandem.v1.Tandem/{method}"
    options = {
        "request_serializer": serializer,
        "response_deserializer": pb.GenerateResponse.FromString,
    }
    try:
        if method == "Generate":
            return [await channel.unary_unary(path, **options)(request, timeout=timeout)]
        return [r async for r in channel.unary_stream(path, **options)(request, timeout=timeout)]
    except grpc.aio.AioRpcError as exc:
        return exc


def check_answer(request: Any, answer: Any) -> None:
    """A valid generation, or a status that names what was wrong."""
    if isinstance(answer, grpc.aio.AioRpcError):
        assert answer.code() in CLEAR_CODES, (answer.code(), answer.details(), request)
        assert answer.details(), request
        return
    last = answer[-1]
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH), (answer, request)
    tokens = [t for response in answer for t in response.token_ids]
    assert len(tokens) == last.usage.completion_tokens, (answer, request)
    assert all(0 <= t < VOCAB for t in tokens)
    if isinstance(request, pb.GenerateRequest):
        if request.sampling.HasField("max_tokens"):
            assert len(tokens) <= request.sampling.max_tokens
        if request.request_id:
            assert last.request_id == request.request_id


async def send_all(address: str, calls: list[tuple[str, Any]], timeout: float) -> list[Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        return await asyncio.gather(*(send(channel, m, r, timeout) for m, r in calls))


# ---- OpenAI HTTP -----------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | TEXT
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
SMALL_NUMBER = st.sampled_from([0, 1, 4, -1, 0.5, 2.0, 3.0, True, "1", None])


def _field(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A body field: mostly a plausible value, sometimes any JSON at all."""
    return st.one_of(valid, valid, JSON)


@st.composite
def openai_body(draw, chat: bool, model: str) -> Any:
    """A /v1/completions or /v1/chat/completions body."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)  # not even an object, or an object of anything
    body: dict[str, Any] = {}
    optional = {
        "model": _field(st.sampled_from([model, "gpt-4o"])),
        "max_tokens": _field(st.integers(-1, 8)),
        "temperature": _field(SMALL_NUMBER),
        "top_p": _field(SMALL_NUMBER),
        "top_k": _field(st.sampled_from([-1, 0, 1, 40, VOCAB + 1])),
        "seed": _field(st.integers(-1, 2**64)),
        "stop": _field(st.lists(st.text(max_size=3), max_size=2) | st.text(max_size=3)),
        "stop_token_ids": _field(st.lists(st.integers(-2, VOCAB + 2), max_size=2)),
        "stream": _field(st.booleans()),
        "n": _field(st.integers(0, 2)),
        "ignore_eos": _field(st.booleans()),
        "speculation": _field(st.sampled_from(["off", "ngram", "model", "hybrid", "nope"])),
        "num_speculative_tokens": _field(st.integers(-1, 6)),
        "request_id": _field(st.text(max_size=6)),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if chat:
        message = st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "robot"]), "content": TEXT}
        )
        body["messages"] = draw(_field(st.lists(message, max_size=3)))
    else:
        prompt = TEXT | st.lists(st.integers(-2, VOCAB + 2), min_size=1, max_size=6)
        body["prompt"] = draw(_field(prompt))
    if draw(st.booleans()):
        body.setdefault("max_tokens", draw(st.integers(1, 6)))  # keep most of them cheap
    return body


def check_http(body: Any, response: Any) -> None:
    """A completion (JSON, or server-sent events ending in [DONE]), or an OpenAI error object
    with a 4xx status; never a 5xx."""
    assert response.status_code < 500, (response.status_code, response.text[:500], body)
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["message"] and error["type"], (error, body)
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]", (events[-3:], body)
        for event in events[:-1]:
            data = json.loads(event.removeprefix("data: "))
            assert "error" not in data or data["error"]["code"] < 500, (data, body)
        return
    answer = response.json()
    assert answer["choices"][0]["finish_reason"] in ("stop", "length"), (answer, body)
    assert answer["usage"]["completion_tokens"] >= 0
