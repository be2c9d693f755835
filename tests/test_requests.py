"""Request validation as plain logic, with the real tokenizer of the default model."""

import math

import pytest

from tandem.cluster.requests import Limits, RequestError, prepare
from tandem.protos import tandem_pb2 as pb

LIMITS = Limits(max_model_len=64, vocab_size=49152, max_tokens=32, default_max_tokens=16)


def chat(text: str, **sampling) -> pb.GenerateRequest:
    request = pb.GenerateRequest(sampling=pb.SamplingParams(**sampling))
    request.chat.messages.add(role="user", content=text)
    return request


def test_chat_is_rendered_with_the_template(tokenizer):
    prepared = prepare(chat("Hi there"), tokenizer, LIMITS)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(prepared.prompt_token_ids) == expected
    assert len(prepared.request_id) == 32


def test_defaults_and_clamping(tokenizer):
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=list(range(1, 55))))
    prepared = prepare(request, tokenizer, LIMITS)
    assert prepared.sampling["temperature"] == 1.0
    assert prepared.sampling["max_tokens"] == 64 - 54  # the default, clamped to the room left
    request.sampling.max_tokens = 11
    with pytest.raises(RequestError, match="do not fit") as info:
        prepare(request, tokenizer, LIMITS)
    assert info.value.code == "OUT_OF_RANGE"


def test_sampling_fields_pass_through(tokenizer):
    request = chat("x", temperature=0.5, top_p=0.9, top_k=-1, min_p=0.05, seed=7, max_tokens=4)
    request.sampling.stop.append("\n")
    request.sampling.stop_token_ids.append(2)
    sampling = prepare(request, tokenizer, LIMITS).sampling
    assert sampling == {
        "temperature": 0.5,
        "top_p": pytest.approx(0.9),
        "top_k": 0,
        "min_p": pytest.approx(0.05),
        "seed": 7,
        "max_tokens": 4,
        "stop": ["\n"],
        "stop_token_ids": [2],
        "ignore_eos": False,
    }


@pytest.mark.parametrize(
    ("sampling", "code", "field"),
    [
        ({"temperature": -0.1}, "INVALID_ARGUMENT", "sampling.temperature"),
        ({"temperature": math.inf}, "INVALID_ARGUMENT", "sampling.temperature"),
        ({"top_p": 0.0}, "INVALID_ARGUMENT", "sampling.top_p"),
        ({"top_k": -2}, "INVALID_ARGUMENT", "sampling.top_k"),
        ({"min_p": -0.1}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"min_p": 1.5}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"min_p": math.nan}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"max_tokens": 0}, "INVALID_ARGUMENT", "sampling.max_tokens"),
        ({"max_tokens": 33}, "OUT_OF_RANGE", "sampling.max_tokens"),
        ({"stop_token_ids": [49152]}, "OUT_OF_RANGE", "sampling.stop_token_ids[0]"),
        ({"stop": [""]}, "INVALID_ARGUMENT", "sampling.stop[0]"),
    ],
)
def test_bad_sampling(tokenizer, sampling, code, field):
    with pytest.raises(RequestError) as info:
        prepare(chat("x", **sampling), tokenizer, LIMITS)
    assert info.value.code == code
    assert str(info.value).startswith(field)


def test_sampled_requests_speculate(tokenizer):
    """Sampling is verified exactly (tandem.plugins.sampler): a request at temperature > 0 keeps
    its speculation mode."""
    limits = Limits(64, 49152, 32, 16, ("off", "ngram"), "ngram", 4)
    request = chat("x", temperature=0.7, top_k=40, top_p=0.9, min_p=0.05)
    prepared = prepare(request, tokenizer, limits)
    assert (prepared.mode, prepared.k) == ("ngram", 4)


def test_min_p_is_refused_where_vllm_would_ignore_it(tokenizer):
    """With speculation.sampler.kind vllm, vLLM refuses min_p (it does not apply it beside
    drafts): tandem says so first, naming the field and the setting; min_p 0 is no min_p."""
    limits = Limits(64, 49152, 32, 16, ("off", "ngram"), "ngram", 4, min_p=False)
    with pytest.raises(RequestError, match="speculation.sampler.kind") as info:
        prepare(chat("x", min_p=0.1), tokenizer, limits)
    assert info.value.code == "INVALID_ARGUMENT" and str(info.value).startswith("sampling.min_p")
    assert prepare(chat("x", min_p=0.0), tokenizer, limits).sampling["min_p"] == 0.0
