"""The OpenAI wire format without a server: request conversion, errors, server-sent events."""

from __future__ import annotations

import json

import pytest

from tandem.cluster.coordinator import Chunk
from tandem.cluster.requests import RequestError
from tandem.deploy import openai_api
from tandem.protos import tandem_pb2 as pb

pytestmark = pytest.mark.timeout(120)

MODEL = "m"


def test_chat_request_maps_sampling_and_parts():
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
            },
        ],
        "temperature": 0,
        "max_completion_tokens": 7,
        "stop": "\n",
        "seed": 3,
        "top_k": 5,
        "speculation": "ngram",
        "num_speculative_tokens": 2,
    }
    request = openai_api.chat_request(body, MODEL)
    assert [(m.role, m.content) for m in request.chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    s = request.sampling
    assert (s.temperature, s.max_tokens, list(s.stop), s.seed, s.top_k) == (0, 7, ["\n"], 3, 5)
    assert request.speculation.mode == pb.SPECULATION_MODE_NGRAM
    assert request.speculation.num_speculative_tokens == 2
    assert not request.sampling.HasField("top_p")  # unset: the server's default


def test_completion_prompts():
    assert openai_api.completion_request({"prompt": "abc"}, MODEL).text == "abc"
    assert openai_api.completion_request({"prompt": ["abc"]}, MODEL).text == "abc"
    ids = openai_api.completion_request({"prompt": [1, 2, 3]}, MODEL).token_ids.ids
    assert list(ids) == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"prompt": ["a", "b"]}, "INVALID_ARGUMENT", "prompt:"),
        ({"prompt": "a", "model": "other"}, "NOT_FOUND", "model: 'other' is not served"),
        ({"prompt": "a", "n": 2}, "INVALID_ARGUMENT", "n: only 1"),
        ({"prompt": "a", "logprobs": 3}, "INVALID_ARGUMENT", "logprobs: not supported"),
        ({"prompt": "a", "max_tokens": "9"}, "INVALID_ARGUMENT", "max_tokens: expected a number"),
        ({"prompt": "a", "temperature": True}, "INVALID_ARGUMENT", "temperature:"),
        ({"prompt": "a", "stop": [1]}, "INVALID_ARGUMENT", "stop:"),
        ({"prompt": "a", "speculation": "magic"}, "INVALID_ARGUMENT", "speculation:"),
    ],
)
def test_bad_completion_bodies(body, code, message):
    with pytest.raises(RequestError, match=message) as exc:
        openai_api.completion_request(body, MODEL)
    assert exc.value.code == code


def test_bad_chat_content():
    with pytest.raises(RequestError, match=r"messages\[0\].content"):
        openai_api.chat_request({"messages": [{"role": "user", "content": 5}]}, MODEL)
    with pytest.raises(RequestError, match="messages:"):
        openai_api.chat_request({"messages": "hi"}, MODEL)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("INVALID_ARGUMENT", 400),
        ("OUT_OF_RANGE", 400),
        ("UNAUTHENTICATED", 401),
        ("NOT_FOUND", 404),
        ("ALREADY_EXISTS", 409),
        ("RESOURCE_EXHAUSTED", 429),
        ("UNAVAILABLE", 503),
        ("INTERNAL", 500),
    ],
)
def test_error_statuses(code, status):
    got, body = openai_api.error_response(RequestError(code, "why"))
    assert got == status
    assert body["error"]["message"] == "why" and body["error"]["code"] == code


def _chunks() -> list[Chunk]:
    last = Chunk("r1", [3], " world", "length", prompt_tokens=4, completion_tokens=2)
    return [Chunk("r1", [2], "Hello"), last]


def test_whole_responses():
    chat = openai_api.completion_response(_chunks(), MODEL, chat=True)
    assert chat["object"] == "chat.completion" and chat["id"] == "chatcmpl-r1"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    assert chat["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    text = openai_api.completion_response(_chunks(), MODEL, chat=False)
    assert text["choices"][0]["text"] == "Hello world"
    assert text["choices"][0]["finish_reason"] == "length"


def test_event_stream():
    stream = openai_api.EventStream(MODEL, chat=True, include_usage=True)
    events = [e for chunk in _chunks() for e in stream.events(chunk)] + [stream.DONE]
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    data = [json.loads(e[6:]) for e in events[:-1]]
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert data[1]["choices"][0] == {
        "index": 0,
        "finish_reason": "length",
        "delta": {"content": " world"},
    }
    assert data[2]["choices"] == [] and data[2]["usage"]["total_tokens"] == 6
    assert {d["object"] for d in data} == {"chat.completion.chunk"}
