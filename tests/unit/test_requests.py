"""Request validation as plain logic, with the real tokenizer of the default model."""

import dataclasses
import math

import pytest

from tandem.cluster.frontdoor.requests import Limits, max_prompt_chars, prepare
from tandem.cluster.transport.messages import RequestError
from tandem.protos import tandem_pb2 as pb

pytestmark = pytest.mark.timeout(600)  # loads models; slow on a loaded machine

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
        ({"temperature": 2.01}, "INVALID_ARGUMENT", "sampling.temperature"),  # vLLM's limit
        ({"top_p": 0.0}, "INVALID_ARGUMENT", "sampling.top_p"),
        ({"top_k": -2}, "INVALID_ARGUMENT", "sampling.top_k"),
        ({"min_p": -0.1}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"min_p": 1.5}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"min_p": math.nan}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"max_tokens": 0}, "INVALID_ARGUMENT", "sampling.max_tokens"),
        ({"max_tokens": 33}, "OUT_OF_RANGE", "sampling.max_tokens"),
        ({"stop_token_ids": [49152]}, "OUT_OF_RANGE", "sampling.stop_token_ids[0]"),
        ({"stop": [""]}, "INVALID_ARGUMENT", "sampling.stop[0]"),
        ({"temperature": 2.5}, "INVALID_ARGUMENT", "sampling.temperature"),
        ({"presence_penalty": 2.5}, "INVALID_ARGUMENT", "sampling.presence_penalty"),
        ({"frequency_penalty": -3}, "INVALID_ARGUMENT", "sampling.frequency_penalty"),
        ({"repetition_penalty": 0}, "INVALID_ARGUMENT", "sampling.repetition_penalty"),
        ({"min_p": 1.5}, "INVALID_ARGUMENT", "sampling.min_p"),
        ({"min_tokens": 5, "max_tokens": 4}, "INVALID_ARGUMENT", "sampling.min_tokens"),
        ({"logit_bias": {49152: 1.0}}, "OUT_OF_RANGE", "sampling.logit_bias[49152]"),
        ({"logprobs": 21}, "INVALID_ARGUMENT", "sampling.logprobs"),
        ({"prompt_logprobs": -1}, "INVALID_ARGUMENT", "sampling.prompt_logprobs"),
    ],
)
def test_bad_sampling(tokenizer, sampling, code, field):
    with pytest.raises(RequestError) as info:
        prepare(chat("x", **sampling), tokenizer, LIMITS)
    assert info.value.code == code
    assert str(info.value).startswith(field)


def test_text_that_encodes_to_no_tokens_is_refused(tokenizer):
    # Found by the gRPC fuzz test: a lone control character; vLLM refuses an empty prompt.
    with pytest.raises(RequestError, match="^prompt.text: the text encodes to no tokens") as info:
        prepare(pb.GenerateRequest(text="\x1d"), tokenizer, LIMITS)
    assert info.value.code == "INVALID_ARGUMENT"


def test_prompts_too_large_for_the_context_are_refused_before_tokenizing(tokenizer):
    """A text longer than max_model_len times the longest vocabulary entry cannot fit: it is
    refused without tokenizing it (a 4 MB prompt costs nothing); so are more chat messages
    than the context has tokens."""
    bound = max_prompt_chars(tokenizer, LIMITS.max_model_len)
    assert bound == 64 * max(len(t) for t in tokenizer.get_vocab())
    limits = Limits(**{**LIMITS.__dict__, "max_prompt_chars": bound})
    never = type("Untouchable", (), {})()  # any use of this tokenizer would raise
    for request, field in (
        (pb.GenerateRequest(text="x" * (bound + 1)), "prompt.text"),
        (chat("x" * (bound + 1)), "prompt.chat"),
    ):
        with pytest.raises(RequestError, match=f"^{field}: {bound + 1} characters") as info:
            prepare(request, never, limits)
        assert info.value.code == "OUT_OF_RANGE"
    many = pb.GenerateRequest()
    for _ in range(64):
        many.chat.messages.add(role="user", content="")
    with pytest.raises(RequestError, match="64 messages cannot fit") as info:
        prepare(many, never, limits)
    assert info.value.code == "OUT_OF_RANGE"


SPECULATING = Limits(
    max_model_len=64,
    vocab_size=49152,
    max_tokens=32,
    default_max_tokens=16,
    modes=("off", "ngram"),
    default_mode="ngram",
    num_speculative_tokens=4,
    speculative_engine=True,
)


def test_vllm_sampling_fields_pass_through(tokenizer):
    request = chat("x", temperature=0, presence_penalty=0.5, frequency_penalty=0.25)
    request.sampling.repetition_penalty = 1.5
    request.sampling.logprobs = 3
    request.sampling.prompt_logprobs = 0
    request.sampling.logit_bias[7] = 250.0
    request.sampling.include_stop_str_in_output = True
    request.sampling.skip_special_tokens = False
    sampling = prepare(request, tokenizer, LIMITS).sampling
    assert sampling["presence_penalty"] == 0.5 and sampling["frequency_penalty"] == 0.25
    assert sampling["repetition_penalty"] == 1.5
    assert (sampling["logprobs"], sampling["prompt_logprobs"]) == (3, 0)
    assert sampling["logit_bias"] == {7: 100.0}  # clamped to OpenAI's range, as vLLM does
    assert sampling["include_stop_str_in_output"] and not sampling["skip_special_tokens"]


def test_logit_bias_is_refused_while_speculating(tokenizer):
    """vLLM refuses logit_bias with drafts (its rejection sampler would not apply it)."""
    request = chat("x", temperature=0.5)
    request.sampling.logit_bias[7] = 1.0
    with pytest.raises(RequestError, match="sampling.logit_bias: not supported while") as info:
        prepare(request, tokenizer, SPECULATING)
    assert info.value.field == "sampling.logit_bias"
    assert prepare(request, tokenizer, LIMITS).sampling["logit_bias"]  # honoured without drafts


def test_min_tokens_decodes_without_drafts(tokenizer):
    """vLLM's rejection sampler does not apply min_tokens to drafted positions."""
    assert prepare(chat("x", temperature=0), tokenizer, SPECULATING).mode == "ngram"
    prepared = prepare(chat("x", temperature=0, min_tokens=3), tokenizer, SPECULATING)
    assert (prepared.mode, prepared.num_speculative_tokens) == ("off", 0)
    assert prepared.sampling["min_tokens"] == 3


def test_sampled_requests_speculate(tokenizer):
    """Sampling is verified exactly (tandem.plugins.sampler): a request at temperature > 0 keeps
    its speculation mode."""
    request = chat("x", temperature=0.7, top_k=40, top_p=0.9, min_p=0.05)
    prepared = prepare(request, tokenizer, SPECULATING)
    assert (prepared.mode, prepared.num_speculative_tokens) == ("ngram", 4)


def test_min_p_is_refused_where_vllm_would_ignore_it(tokenizer):
    """With speculation.sampler.kind vllm, vLLM refuses min_p (it does not apply it beside
    drafts): tandem says so first, naming the field and the setting; min_p 0 is no min_p."""
    limits = dataclasses.replace(SPECULATING, min_p=False)
    with pytest.raises(RequestError, match="speculation.sampler.kind") as info:
        prepare(chat("x", temperature=0.5, min_p=0.1), tokenizer, limits)
    assert info.value.code == "INVALID_ARGUMENT" and str(info.value).startswith("sampling.min_p")
    no_min_p = chat("x", temperature=0.5, min_p=0.0)
    assert prepare(no_min_p, tokenizer, limits).sampling["min_p"] == 0.0


def test_structured_outputs_become_vllms_constraint(tokenizer):
    """One constraint, as vLLM's StructuredOutputsParams keyword arguments (a schema parsed
    into a dict); what is malformed is refused naming the field."""
    from tandem.client import structured_outputs

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for given, expected in (
        ({"json": schema}, {"json": schema}),
        ({"json_object": True}, {"json_object": True}),
        ({"regex": "[0-9]+"}, {"regex": "[0-9]+"}),
        ({"choice": ["yes", "no"]}, {"choice": ["yes", "no"]}),
        ({"grammar": 'root ::= "a"'}, {"grammar": 'root ::= "a"'}),
    ):
        request = chat("Hi", structured_outputs=structured_outputs(**given))
        assert prepare(request, tokenizer, LIMITS).sampling["structured_outputs"] == expected
    assert "structured_outputs" not in prepare(chat("Hi"), tokenizer, LIMITS).sampling
    for bad, field in (
        (pb.StructuredOutputs(), "sampling.structured_outputs"),
        (pb.StructuredOutputs(json="{not json"), "sampling.structured_outputs.json"),
        (pb.StructuredOutputs(json="[1]"), "sampling.structured_outputs.json"),
        (pb.StructuredOutputs(json_object=False), "sampling.structured_outputs.json_object"),
        (pb.StructuredOutputs(choice=pb.Choices()), "sampling.structured_outputs.choice"),
        (pb.StructuredOutputs(regex=" "), "sampling.structured_outputs.regex"),
    ):
        with pytest.raises(RequestError) as info:
            prepare(chat("Hi", structured_outputs=bad), tokenizer, LIMITS)
        assert info.value.code == "INVALID_ARGUMENT" and info.value.field == field, bad
