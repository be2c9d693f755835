"""`tandem serve`'s OpenAI HTTP API, beside its gRPC API in the same process: the official
`openai` client against the shared speculating service (loopback, no token), greedy output equal
to gRPC's token for token, streamed and whole, the routes vLLM's server has, /metrics on the HTTP
port. TLS and the token over HTTP: tests/service/test_security.py; the OpenAI request table
(the same app under Ray Serve): tests/service/test_serve_app.py."""

from __future__ import annotations

import json

import grpc
import httpx
import jsonschema
import openai
import pytest

from tandem.client import TandemClient
from tests.support.openai_checks import chat_equals_grpc, completion_equals_grpc
from tests.support.prometheus import scrape
from tests.support.prompts import spec_bench_prompts
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.uses_service(SPECULATING)]

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def service(services):
    return services.get(SPECULATING)


@pytest.fixture(scope="module")
def oai(service):
    return openai.OpenAI(base_url=service.http_url + "/v1", api_key="unused", max_retries=0)


def test_chat_and_completions_over_http_equal_grpc(service, oai):
    """With drafts on (the service's default mode), every form of the OpenAI API gives the
    tokens gRPC gives."""
    with TandemClient(service.address, timeout=300) as client:
        for prompt in spec_bench_prompts(2, ("extraction", "writing")):
            chat_equals_grpc(oai, MODEL, client, prompt)
        completion_equals_grpc(oai, MODEL, client, "The capital of France is")


def test_models_tokenizer_health_and_refusals(service, oai):
    assert [m.id for m in oai.models.list().data] == [MODEL]
    http = httpx.Client(base_url=service.http_url, timeout=60)
    assert http.get("/health").json() == {"status": "ok"}
    tokens = http.post("/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
    assert http.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": "Hello world"}
    assert http.get("/version").json()["version"]
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model=MODEL, prompt="Hi", max_tokens=10**6)
    assert refused.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError, match="is not served"):
        oai.completions.create(model="gpt-4o", prompt="Hi")
    # A field tandem does not know is ignored, as vLLM's server ignores it, and named.
    body = {"prompt": "Hi", "max_tokens": 2, "temprature": 0.5}
    ignored = http.post("/v1/completions", json=body)
    assert ignored.status_code == 200 and ignored.headers["tandem-ignored-fields"] == "temprature"
    garbage = http.post("/v1/completions", content=b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["type"] == "BadRequestError"


def test_metrics_on_the_http_port_are_the_services_figures(service):
    """/metrics on the HTTP port, where vLLM's server has it, shows what server.metrics_port
    shows (one registry) and moves with requests."""

    key = ("tandem_generation_tokens_total", ())
    own_port = f"http://127.0.0.1:{service.config['server']['metrics_port']}/metrics"
    before = scrape(service.http_url + "/metrics")
    with TandemClient(service.address, timeout=300) as client:
        client.generate("Count to five.", temperature=0, max_tokens=5, ignore_eos=True)
    after = scrape(service.http_url + "/metrics")
    assert after[key] == before[key] + 5
    vllm = ("vllm:generation_tokens_total", (("engine", "0"), ("model_name", MODEL)))
    assert after[vllm] == after[key]
    assert scrape(own_port)[key] == after[key]


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_structured_outputs_hold_with_drafts_and_equal_the_target_alone(service, oai):
    """vLLM's grammar constrains drafted positions too: with drafts (ngram, auto) a JSON schema,
    a JSON object, a choice and a regex give valid output, the same tokens as the target
    alone, greedy and seeded."""
    messages = [{"role": "user", "content": "Ann is 31. Give her name and age as JSON."}]
    formats = (
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        {"type": "json_object"},
    )
    for response_format in formats:
        for sampling in ({"temperature": 0}, {"temperature": 0.8, "seed": 7}):
            texts = {}
            for mode in ("off", "ngram", "auto"):
                chat = oai.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    max_tokens=64,
                    response_format=response_format,
                    extra_body={"speculation": mode},
                    **sampling,
                )
                assert chat.choices[0].finish_reason == "stop", chat
                texts[mode] = chat.choices[0].message.content
                value = json.loads(texts[mode])
                if response_format["type"] == "json_schema":
                    jsonschema.validate(value, PERSON)
                else:
                    assert isinstance(value, dict)
            assert texts["ngram"] == texts["auto"] == texts["off"], (response_format, texts)
    # gRPC: a regex the prompt repeats (so ngram drafts it), and a choice
    repeat = "Say 'red green blue' four times."
    with TandemClient(service.address, timeout=300) as client:
        regex = {"regex": "(red green blue ){3}red green blue"}
        off = client.generate(repeat, temperature=0, structured_outputs=regex, speculation="off")
        drafted = client.generate(
            repeat, temperature=0, structured_outputs=regex, speculation="ngram"
        )
        assert off.text == drafted.text == "red green blue " * 3 + "red green blue"
        assert drafted.speculation.accepted_tokens > 0  # drafts were verified under the grammar
        choice = {"choice": ["Paris", "London", "Rome"]}
        answer = client.generate("The capital of France is", structured_outputs=choice)
        assert answer.text in choice["choice"]


def test_a_constraint_vllm_cannot_compile_is_refused_naming_it(service, oai):
    """A regex xgrammar cannot compile is refused as the target adds the request: 400 (gRPC
    INVALID_ARGUMENT), never a 500, and the service goes on serving."""
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(
            model=MODEL,
            prompt="Hi",
            max_tokens=4,
            extra_body={"structured_outputs": {"regex": "("}},
        )
    assert "sampling" in refused.value.message
    with TandemClient(service.address, timeout=300) as client:
        with pytest.raises(grpc.RpcError) as grpc_refused:
            client.generate("Hi", max_tokens=4, structured_outputs={"regex": "("})
        assert grpc_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.generate("Hi", max_tokens=4, temperature=0).usage.completion_tokens == 4
