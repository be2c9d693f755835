"""The Ray Serve app for real: embedded Ray, the Serve app from deploy/serve/local-cpu.yaml's
args, the official `openai` client over HTTP and tandem's gRPC client through Serve's gRPC
ingress, with bearer-token auth on both."""

from __future__ import annotations

import os

import grpc
import httpx
import openai
import pytest
import ray
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from tandem.client import TandemClient
from tandem.deploy.serve_app import GRPC_SERVICER_FUNCTION, app_builder

from .conftest import REPO, free_port, spec_bench_prompts

pytestmark = pytest.mark.slow

SERVE_CONFIG = REPO / "deploy" / "serve" / "local-cpu.yaml"
TOKEN_ENV = "TANDEM_SERVE_TEST_TOKEN"
TOKEN = "serve-test-token"


@pytest.fixture(scope="module")
def app():
    """The app of the documented Serve config, with auth on and test ports."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    args = config["applications"][0]["args"]
    server = args["config"]["server"]
    metrics_port = free_port()
    server.update(metrics_port=metrics_port, auth={"token_env": TOKEN_ENV})
    os.environ[TOKEN_ENV] = TOKEN  # inherited by the raylet, hence by the Serve replica
    http_port, grpc_port = free_port(), free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": http_port},
            grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]},
        )
        serve.run(app_builder(args), name="tandem", route_prefix="/")
        yield {
            "model": args["config"]["models"]["target"],
            "http": f"http://127.0.0.1:{http_port}",
            "grpc": f"127.0.0.1:{grpc_port}",
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(TOKEN_ENV)


@pytest.fixture(scope="module")
def oai(app):
    return openai.OpenAI(base_url=app["http"] + "/v1", api_key=TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def grpc_client(app):
    with TandemClient(app["grpc"], token=TOKEN, timeout=120) as client:
        yield client


def test_openai_and_grpc_give_the_same_greedy_output(app, oai, grpc_client, model_path):
    """Chat, chat streaming and raw completions over OpenAI HTTP equal tandem's gRPC API through
    Serve's gRPC ingress, which equals HF transformers' greedy decoding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    for prompt in spec_bench_prompts(2, ("writing", "coding")):
        messages = [{"role": "user", "content": prompt}]
        via_grpc = grpc_client.generate(prompt, temperature=0, max_tokens=32)
        chat = oai.chat.completions.create(
            model=app["model"], messages=messages, temperature=0, max_tokens=32
        )
        assert chat.choices[0].message.content == via_grpc.text
        assert chat.choices[0].finish_reason == "length"
        assert chat.usage.completion_tokens == 32 == via_grpc.usage.completion_tokens
        assert chat.usage.prompt_tokens == via_grpc.usage.prompt_tokens

        streamed = oai.chat.completions.create(
            model=app["model"],
            messages=messages,
            temperature=0,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        events = list(streamed)
        assert events[0].choices[0].delta.role == "assistant"
        text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
        assert text == via_grpc.text
        assert len(events) > 3 and events[-1].usage.completion_tokens == 32

        streamed_grpc = list(grpc_client.stream(prompt, temperature=0, max_tokens=32))
        assert [t for c in streamed_grpc for t in c.token_ids] == list(via_grpc.token_ids)

        text_prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer.encode(text_prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            expected = hf.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1] :]
        assert list(via_grpc.token_ids) == expected.tolist()

    raw = "The capital of France is"
    completion = oai.completions.create(model=app["model"], prompt=raw, temperature=0, max_tokens=8)
    same = grpc_client.generate(raw, chat=False, temperature=0, max_tokens=8)
    assert completion.choices[0].text == same.text and same.text
    chunks = oai.completions.create(
        model=app["model"], prompt=raw, temperature=0, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == same.text


def test_models_and_refusals(app, oai, grpc_client):
    assert [m.id for m in oai.models.list().data] == [app["model"]]
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model=app["model"], prompt="Hi", max_tokens=100_000)
    assert bad.value.status_code == 400
    assert "sampling.max_tokens: 100000 exceeds the server's limit" in bad.value.message
    with pytest.raises(openai.NotFoundError, match="is not served"):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="unknown role"):
        robot = [{"role": "robot", "content": "x"}]
        oai.chat.completions.create(model=app["model"], messages=robot)
    garbage = httpx.post(
        app["http"] + "/v1/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(grpc.RpcError) as refused:
        grpc_client.generate("Hi", max_tokens=100_000)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert grpc_client.model_info().model == app["model"]
    stats = grpc_client.stats()
    assert stats.requests_rejected >= 3
    # The Serve replica exports the same figures as Prometheus metrics.
    metrics = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(httpx.get(app["metrics"]).text)
        for s in family.samples
    }
    assert metrics[("tandem_requests_total", ("rejected",))] == stats.requests_rejected
    assert metrics[("tandem_generation_tokens_total", ())] == stats.generated_tokens > 0


def test_token_required_but_health_open(app):
    for key in ("wrong-token", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            response = httpx.request(method, app["http"] + path, headers=headers, json={})
            assert response.status_code == 401, (key, path)
            assert response.json()["error"]["type"] == "authentication_error"
        with TandemClient(app["grpc"], token=key) as client, pytest.raises(grpc.RpcError) as exc:
            client.generate("Hi", max_tokens=4)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    unauthenticated = openai.OpenAI(base_url=app["http"] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthenticated.models.list()
    assert httpx.get(app["http"] + "/health").json() == {"status": "ok"}


def test_every_mode_through_the_openai_endpoint(app, oai):
    """Each of tandem's modes (Mode) is accepted by the OpenAI extra field and gives the
    target's greedy output; an unknown one is a 400 naming the field."""
    from tandem.speculation.protocol import Mode

    messages = [{"role": "user", "content": spec_bench_prompts(1, ("coding",))[0]}]
    texts = {}
    for mode in Mode:
        chat = oai.chat.completions.create(
            model=app["model"],
            messages=messages,
            temperature=0,
            max_tokens=24,
            extra_body={"speculation": mode.value},
        )
        texts[mode] = chat.choices[0].message.content
    assert all(text == texts[Mode.OFF] for text in texts.values()), texts
    with pytest.raises(openai.BadRequestError, match="speculation"):
        oai.chat.completions.create(
            model=app["model"], messages=messages, extra_body={"speculation": "telepathy"}
        )
