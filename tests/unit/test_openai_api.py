"""The OpenAI wire format without a server: request parsing (every field honoured or refused,
types and widths checked before protobuf), vLLM's error objects, logprobs and server-sent
events. The same requests through the real Serve app: tests/service/test_serve_app.py."""

from __future__ import annotations

import json

import pytest

from tandem.cluster.frontdoor import openai_requests, openai_responses
from tandem.cluster.frontdoor.coordinator import Chunk
from tandem.cluster.transport.messages import RequestError
from tandem.protos import tandem_pb2 as pb
from tandem.speculation.protocol import Mode

pytestmark = pytest.mark.timeout(120)

MODEL = "m"


def chat(body: dict) -> openai_requests.OpenAIRequest:
    return openai_requests.parse(
        {"messages": [{"role": "user", "content": "x"}], **body}, MODEL, True
    )


def completion(body: dict) -> openai_requests.OpenAIRequest:
    return openai_requests.parse({"prompt": "x", **body}, MODEL, False)


def test_chat_request_maps_every_sampling_field():
    parsed = openai_requests.parse(
        {
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
            "min_p": 0.25,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.2,
            "min_tokens": 2,
            "logprobs": True,
            "top_logprobs": 3,
            "prompt_logprobs": 1,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "speculation": "ngram",
            "num_speculative_tokens": 2,
            "user": "someone",
        },
        MODEL,
        chat=True,
    )
    (request,) = parsed.requests
    assert [(m.role, m.content) for m in request.chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    s = request.sampling
    assert (s.temperature, s.max_tokens, list(s.stop), s.seed, s.top_k) == (0, 7, ["\n"], 3, 5)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)
    assert s.repetition_penalty == pytest.approx(1.2) and s.min_tokens == 2
    assert (s.logprobs, s.prompt_logprobs, parsed.logprobs) == (3, 1, 3)
    assert s.include_stop_str_in_output and not s.skip_special_tokens
    assert s.min_p == 0.25
    assert request.speculation.mode == pb.SPECULATION_MODE_NGRAM
    assert request.speculation.num_speculative_tokens == 2
    assert not s.HasField("top_p")  # unset: the server's default


def test_completion_prompts_and_logprobs():
    assert completion({}).requests[0].text == "x"
    assert completion({"prompt": ["abc"]}).requests[0].text == "abc"
    assert list(completion({"prompt": [1, 2, 3]}).requests[0].token_ids.ids) == [1, 2, 3]
    parsed = completion({"logprobs": 2, "logit_bias": {"7": 5, "8": -200}})
    assert parsed.logprobs == 2 and parsed.requests[0].sampling.logprobs == 2
    assert dict(parsed.requests[0].sampling.logit_bias) == {7: 5.0, 8: -200.0}


def test_n_choices_take_vllms_seeds_and_ids():
    with pytest.raises(RequestError, match="n: must be 1 when using greedy sampling"):
        completion({"n": 3, "temperature": 0})
    parsed = completion({"n": 3, "seed": 10, "request_id": "r"})
    assert [r.sampling.seed for r in parsed.requests] == [10, 11, 12]
    assert [r.request_id for r in parsed.requests] == ["0_r", "1_r", "2_r"]


def test_speculation_modes_come_from_the_registry():
    assert tuple(m.value for m in Mode) == openai_requests.SPECULATION_MODES


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"prompt": ["a", "b"]}, "INVALID_ARGUMENT", "prompt"),
        ({"model": "other"}, "NOT_FOUND", "model"),
        ({"max_tokens": 99999999999}, "INVALID_ARGUMENT", "max_tokens"),
        ({"max_tokens": "9"}, "INVALID_ARGUMENT", "max_tokens"),
        ({"stop_token_ids": ["x"]}, "INVALID_ARGUMENT", "stop_token_ids"),
        ({"temperature": True}, "INVALID_ARGUMENT", "temperature"),
        ({"seed": -1}, "INVALID_ARGUMENT", "seed"),
        ({"stop": [1]}, "INVALID_ARGUMENT", "stop"),
        ({"logit_bias": {"x": 1}}, "INVALID_ARGUMENT", "logit_bias"),
        ({"logprobs": 21}, "INVALID_ARGUMENT", "logprobs"),
        ({"n": 0}, "INVALID_ARGUMENT", "n"),
        ({"echo": True}, "INVALID_ARGUMENT", "echo"),
        ({"suffix": "s"}, "INVALID_ARGUMENT", "suffix"),
        ({"use_beam_search": True}, "INVALID_ARGUMENT", "use_beam_search"),
        ({"response_format": {"type": "xml"}}, "INVALID_ARGUMENT", "response_format"),
        ({"response_format": {"type": "json_schema"}}, "INVALID_ARGUMENT", "response_format"),
        (
            {"structured_outputs": {"regex": "a", "choice": ["b"]}},
            "INVALID_ARGUMENT",
            "structured_outputs",
        ),
        (
            {"structured_outputs": {"regex": "a", "structural_tag": "x"}},
            "INVALID_ARGUMENT",
            "structured_outputs",
        ),
        ({"structured_outputs": {"choice": "yes"}}, "INVALID_ARGUMENT", "structured_outputs"),
        ({"speculation": "magic"}, "INVALID_ARGUMENT", "speculation"),
        ({"num_speculative_tokens": 2**40}, "INVALID_ARGUMENT", "num_speculative_tokens"),
        ({"stream_options": {"include_usage": True}}, "INVALID_ARGUMENT", "stream_options"),
        ({"stream": True, "prompt_logprobs": 1}, "INVALID_ARGUMENT", "prompt_logprobs"),
    ],
)
def test_bad_completion_bodies(body, code, param):
    with pytest.raises(RequestError) as exc:
        completion(body)
    assert exc.value.code == code
    status, error = openai_responses.error_response(exc.value, chat=False)
    assert error["error"]["param"] == param
    assert error["error"]["code"] == status


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x", "name": 5}]}, "messages"),
        ({"logprobs": 1}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
    ],
)
def test_bad_chat_bodies(body, param):
    with pytest.raises(RequestError) as exc:
        chat(body)
    assert openai_responses.error_response(exc.value, chat=True)[1]["error"]["param"] == param


def test_structured_outputs_from_response_format_or_vllms_field():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    cases = (
        ({"response_format": {"type": "json_object"}}, pb.StructuredOutputs(json_object=True)),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": schema},
                }
            },
            pb.StructuredOutputs(json=json.dumps(schema)),
        ),
        ({"structured_outputs": {"json": schema}}, pb.StructuredOutputs(json=json.dumps(schema))),
        ({"structured_outputs": {"regex": "[ab]+"}}, pb.StructuredOutputs(regex="[ab]+")),
        (
            {"structured_outputs": {"choice": ["yes", "no"], "disable_any_whitespace": False}},
            pb.StructuredOutputs(choice=pb.Choices(values=["yes", "no"])),
        ),
    )
    for body, expected in cases:
        (request,) = chat(body).requests
        assert request.sampling.structured_outputs == expected, body
    (plain,) = chat({"response_format": {"type": "text"}}).requests
    assert not plain.sampling.HasField("structured_outputs")
    with pytest.raises(RequestError, match="not both"):
        chat({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}})


def test_unknown_fields_are_ignored_and_named_as_vllm_ignores_them():
    """vLLM's request models allow extra fields (a newer SDK's, LiteLLM's): it logs and ignores
    them. tandem does too, and lists them (openai_app.py sends the list as a header)."""
    parsed = chat(
        {
            "no_such_field": 1,
            "messages": [{"role": "user", "content": "x", "name": "ann", "tool_calls": []}],
        }
    )
    assert parsed.ignored == ["no_such_field", "messages[0].tool_calls"]
    assert parsed.requests[0].chat.messages[0].name == "ann"
    assert completion({"temprature": 0.5}).ignored == ["temprature"]
    assert completion({}).ignored == []


def test_defaults_of_unsupported_fields_are_accepted():
    """A client that sends a field at its default asks for nothing tandem does not do."""
    parsed = chat({"tool_choice": "none", "response_format": {"type": "text"}, "echo": False})
    assert len(parsed.requests) == 1


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("INVALID_ARGUMENT", 400, "BadRequestError"),
        ("OUT_OF_RANGE", 400, "BadRequestError"),
        ("UNAUTHENTICATED", 401, "AuthenticationError"),
        ("NOT_FOUND", 404, "NotFoundError"),
        ("ALREADY_EXISTS", 409, "ConflictError"),
        ("RESOURCE_EXHAUSTED", 429, "RateLimitError"),
        ("UNAVAILABLE", 503, "ServiceUnavailableError"),
        ("INTERNAL", 500, "InternalServerError"),
    ],
)
def test_error_statuses_in_vllms_shape(code, status, kind):
    got, body = openai_responses.error_response(RequestError(code, "sampling.max_tokens: why"))
    assert got == status
    assert body == {
        "error": {
            "message": "sampling.max_tokens: why",
            "type": kind,
            "param": "max_tokens",
            "code": status,
        }
    }


def _entry(token_id, text, logprob, rank):
    return (token_id, text, logprob, rank)


def _chunks() -> list[Chunk]:
    a = _entry(2, "Hello", -0.1, 1)
    b = _entry(3, " world", -0.5, 2)
    first = Chunk("r1", [2], "Hello", logprobs=[(a, [a, _entry(9, "Hi", -2.0, 2)])])
    last = Chunk(
        "r1",
        [3],
        " world",
        "length",
        prompt_tokens=4,
        completion_tokens=2,
        logprobs=[(b, [b, _entry(4, " there", -0.3, 1)])],
    )
    return [first, last]


def test_whole_responses_with_logprobs():
    parsed = chat({"logprobs": True, "top_logprobs": 1})
    response = openai_responses.completion_response([_chunks()], MODEL, parsed)
    assert response["object"] == "chat.completion" and response["id"] == "chatcmpl-r1"
    choice = response["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello world"}
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == ["Hello", " world"]
    assert content[1]["top_logprobs"] == [
        {"token": " world", "logprob": -0.5, "bytes": list(b" world")}
    ]
    assert response["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}

    parsed = completion({"logprobs": 1})
    text = openai_responses.completion_response([_chunks()], MODEL, parsed)["choices"][0]
    assert text["text"] == "Hello world" and text["finish_reason"] == "length"
    assert text["logprobs"] == {
        "text_offset": [0, 5],
        "token_logprobs": [-0.1, -0.5],
        "tokens": ["Hello", " world"],
        "top_logprobs": [{"Hello": -0.1, "Hi": -2.0}, {" world": -0.5, " there": -0.3}],
    }


def test_event_stream_of_two_choices():
    parsed = chat({"n": 2, "stream": True, "stream_options": {"include_usage": True}})
    stream = openai_responses.EventStream(MODEL, parsed)
    events = [e for index in (0, 1) for chunk in _chunks() for e in stream.events(index, chunk)]
    events += stream.final()
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    data = [json.loads(e[6:]) for e in events[:-1]]
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert data[1]["choices"][0]["delta"] == {"content": " world"}
    assert [d["choices"][0]["index"] for d in data[:4]] == [0, 0, 1, 1]
    assert data[4]["choices"] == [] and data[4]["usage"]["completion_tokens"] == 4
    assert {d["object"] for d in data} == {"chat.completion.chunk"}
