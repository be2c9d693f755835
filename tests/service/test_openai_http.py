"""`tandem serve`'s OpenAI HTTP API, beside its gRPC API in the same process: the official
`openai` client against the shared speculating service (loopback, no token), greedy output equal
to gRPC's token for token, streamed and whole, the routes vLLM's server has, /metrics on the HTTP
port. TLS and the token over HTTP: tests/service/test_security.py; the OpenAI request table
(the same app under Ray Serve): tests/service/test_serve_app.py."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tandem.client import TandemClient
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
            via_grpc = client.generate(prompt, temperature=0, max_tokens=32)
            messages = [{"role": "user", "content": prompt}]
            chat = oai.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, max_tokens=32
            )
            assert chat.choices[0].message.content == via_grpc.text
            assert chat.usage.completion_tokens == via_grpc.usage.completion_tokens == 32
            stream = oai.chat.completions.create(
                model=MODEL,
                messages=messages,
                temperature=0,
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
            )
            events = list(stream)
            assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == (
                via_grpc.text
            )
            assert events[-1].usage.completion_tokens == 32
        raw = "The capital of France is"
        same = client.generate(raw, chat=False, temperature=0, max_tokens=8)
    completion = oai.completions.create(model=MODEL, prompt=raw, temperature=0, max_tokens=8)
    assert completion.choices[0].text == same.text != ""


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

    def scrape(url: str) -> dict[tuple[str, tuple], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(httpx.get(url, timeout=10).text)
            for s in family.samples
        }

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
