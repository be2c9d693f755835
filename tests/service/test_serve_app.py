"""The Ray Serve app for real: embedded Ray, the Serve app from deploy/serve/local-cpu.yaml's
args, the official `openai` client over HTTP and tandem's gRPC client through Serve's gRPC
ingress, with bearer-token auth on both. The OpenAI request table (tests/support/openai_table.py)
runs here too: against tandem alone, and side by side with vLLM's own OpenAI server on the same
model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
import ray
import yaml
from hypothesis import given
from hypothesis import strategies as st
from ray import serve

from tandem.client import TandemClient
from tandem.deploy.serve_app import GRPC_SERVICER_FUNCTION, app_builder
from tests.support import openai_table
from tests.support.fuzzing import check_http, fuzz_settings, openai_body
from tests.support.layout import REPO
from tests.support.openai_checks import chat_equals_grpc, completion_equals_grpc
from tests.support.prometheus import scrape
from tests.support.prompts import spec_bench_prompts
from tests.support.services import free_port

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
        via_grpc = chat_equals_grpc(oai, app["model"], grpc_client, prompt)
        streamed_grpc = list(grpc_client.stream(prompt, temperature=0, max_tokens=32))
        assert [t for c in streamed_grpc for t in c.token_ids] == list(via_grpc.token_ids)

        text_prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer.encode(text_prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            expected = hf.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1] :]
        assert list(via_grpc.token_ids) == expected.tolist()

    completion_equals_grpc(oai, app["model"], grpc_client, "The capital of France is")


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
    assert garbage.json()["error"]["type"] == "BadRequestError"
    with pytest.raises(grpc.RpcError) as refused:
        grpc_client.generate("Hi", max_tokens=100_000)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert grpc_client.model_info().model == app["model"]
    stats = grpc_client.stats()
    assert stats.requests_rejected >= 3
    # The Serve replica exports the same figures as Prometheus metrics, tandem's and vLLM's.
    metrics = scrape(app["metrics"])
    assert metrics[("tandem_requests_total", (("outcome", "rejected"),))] == (
        stats.requests_rejected
    )
    assert metrics[("tandem_generation_tokens_total", ())] == stats.generated_tokens > 0
    vllm = (("engine", "0"), ("model_name", app["model"]))  # vLLM's labels
    assert metrics[("vllm:generation_tokens_total", vllm)] == stats.generated_tokens
    assert metrics[("vllm:prompt_tokens_total", vllm)] == stats.prompt_tokens
    assert metrics[("vllm:num_requests_running", vllm)] == 0
    finished = stats.requests_finished
    assert metrics[("vllm:e2e_request_latency_seconds_count", vllm)] == finished
    assert metrics[("vllm:time_to_first_token_seconds_count", vllm)] == finished
    assert finished == sum(
        metrics[("vllm:request_success_total", (vllm[0], ("finished_reason", r), vllm[1]))]
        for r in STOPS
        if r != "abort"
    )


STOPS = ("stop", "length", "abort")


def ray_logs() -> str:
    """Every log line this test's Ray cluster wrote so far (Serve's proxy and replica included)."""
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return "".join(
        f.read_text(errors="replace") for f in sorted((session / "logs").rglob("*")) if f.is_file()
    )


def test_every_refusal_is_counted_and_logged_in_one_line(app, grpc_client):
    """Refusals of the HTTP layer (JSON, fields, auth) and of the coordinator alike are counted,
    and each logs one line: no traceback, from tandem or from Serve's gRPC ingress."""
    tracebacks = ray_logs().count("Traceback")
    before = grpc_client.stats().requests_rejected
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for request in (
        dict(content=b"{not json", headers=headers),
        dict(json={"prompt": "x", "max_tokens": 99999999999}, headers=headers),
        dict(json={"prompt": "x", "frequency_penalty": 9}, headers=headers),
        dict(json={"prompt": "x"}),  # no token
    ):
        response = httpx.post(app["http"] + "/v1/completions", timeout=60, **request)
        assert response.status_code in (400, 401), response.text
    with pytest.raises(grpc.RpcError) as refused:
        grpc_client.generate("x", max_tokens=10**6)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as streamed:
        list(grpc_client.stream("x", temperature=-1))
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_client.stats().requests_rejected == before + 6
    assert (
        scrape(app["metrics"])[("tandem_requests_total", (("outcome", "rejected"),))] == before + 6
    )
    time.sleep(2)  # Ray flushes worker logs to files about once a second
    logs = ray_logs()
    assert logs.count("Traceback") == tracebacks
    assert "refused (INVALID_ARGUMENT): sampling.temperature: must be in [0, 2.0]" in logs


def test_token_required_but_health_open(app):
    for key in ("wrong-token", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            response = httpx.request(method, app["http"] + path, headers=headers, json={})
            assert response.status_code == 401, (key, path)
            assert response.json()["error"]["type"] == "AuthenticationError"
        with (
            TandemClient(app["grpc"], token=key, timeout=300) as client,
            pytest.raises(grpc.RpcError) as exc,
        ):
            client.generate("Hi", max_tokens=4)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    unauthenticated = openai.OpenAI(base_url=app["http"] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthenticated.models.list()
    assert httpx.get(app["http"] + "/health").json() == {"status": "ok"}


@pytest.mark.timeout_per_example(6)
def test_fuzz_openai_http(app, fuzz_examples):
    """Generated bodies for both endpoints (plausible fields, any JSON at all): every answer is
    a completion or an OpenAI error with a 4xx status, never a 5xx, and the app stays up."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=app["http"], headers=headers, timeout=300) as http:
        json_content = {"Content-Type": "application/json"}

        @fuzz_settings(fuzz_examples)
        @given(chat=st.booleans(), data=st.data())
        def one(chat, data):
            body = data.draw(openai_body(chat, app["model"]))
            path = "/v1/chat/completions" if chat else "/v1/completions"
            # Python's JSON writes NaN and Infinity, as some clients do: the server must cope.
            sent = json.dumps(body).encode()
            check_http(body, http.post(path, content=sent, headers=json_content))

        one()
        assert http.get("/health").json() == {"status": "ok"}
        done = http.post(
            "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0}
        )
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 2


def test_repeated_or_non_ascii_authorization_is_refused(app):
    """Over HTTP a client can send two Authorization headers or non-ASCII bytes: 401, never
    the first or last header winning, never a 500."""
    good = f"Bearer {TOKEN}".encode()
    for headers in (
        [("Authorization", good), ("Authorization", b"Bearer nope")],
        [("Authorization", b"Bearer nope"), ("Authorization", good)],
        [("Authorization", b"Bearer t\xc3\xa9st")],
        [("Authorization", b"Bearer \xff\xfe")],
    ):
        response = httpx.get(app["http"] + "/v1/models", headers=headers, timeout=60)
        assert response.status_code == 401, headers
    assert httpx.get(app["http"] + "/v1/models", headers=[("Authorization", good)]).is_success


# ---- the OpenAI request table ---------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def send(base: str, row: openai_table.Row) -> httpx.Response:
    return httpx.post(base + row.path, json=row.body, headers=AUTH, timeout=300)


def check_error_shape(response: httpx.Response, param: str | None) -> None:
    """vLLM's error object: {"error": {"message", "type", "param", "code": the HTTP status}}."""
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == response.status_code and error["message"] and error["type"]
    assert error["param"] == param, error


@pytest.mark.timeout(900)
def test_openai_request_table(app):
    """Every row gets its status; every refusal names its field in vLLM's error shape."""
    for row in openai_table.ROWS:
        response = send(app["http"], row)
        assert response.status_code == row.status, (row.name, response.text)
        if row.status != 200:
            check_error_shape(response, row.param)
            continue
        body = response.json()
        assert len(body["choices"]) == row.body.get("n", 1), row.name
        if "min_tokens" in row.body:
            assert body["usage"]["completion_tokens"] >= row.body["min_tokens"]
        if "top_logprobs" in row.body:
            for entry in body["choices"][0]["logprobs"]["content"]:
                assert len(entry["top_logprobs"]) == row.body["top_logprobs"]
                assert entry["logprob"] <= 0


@pytest.fixture(scope="module")
def vllm_server(model_path, app):
    """vLLM's own OpenAI server on the same model, speculating (ngram, k=4) as tandem does;
    started after tandem's app so the two never load at once."""
    import subprocess
    import sys

    port = free_port()
    spec = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}'
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(model_path), "--served-model-name", app["model"]]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    command += ["--enforce-eager", "--max-model-len", "2048", "--speculative-config", spec]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        else:
            raise TimeoutError("vLLM's OpenAI server did not start")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _texts(body: dict) -> list[str]:
    return [c.get("text", (c.get("message") or {}).get("content")) for c in body["choices"]]


@pytest.mark.timeout(1500)
def test_side_by_side_with_vllms_openai_server(app, vllm_server):
    """The same table against vLLM's server: the same statuses and error shape, and for greedy
    requests the same text and log-probabilities; the rows where tandem refuses what vLLM does
    state why."""
    compared = 0
    for row in openai_table.ROWS:
        ours, theirs = send(app["http"], row), send(vllm_server, row)
        if row.vllm != "same":
            assert (ours.status_code, theirs.status_code) == (row.status, row.vllm), row.name
            continue
        assert ours.status_code == theirs.status_code == row.status, (
            row.name,
            ours.text[:300],
            theirs.text[:300],
        )
        if row.status != 200:
            assert set(theirs.json()["error"]) == set(ours.json()["error"])
            continue
        if "min_tokens" in row.body:
            continue  # vLLM's drafts skip min_tokens (docs/known-vllm-issues.md)
        if row.body.get("temperature"):
            continue  # sampled: vLLM's CPU rejection sampler is not exact (same file)
        a, b = ours.json(), theirs.json()
        assert _texts(a) == _texts(b), (row.name, _texts(a), _texts(b))
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        assert [a["usage"][k] for k in keys] == [b["usage"][k] for k in keys], row.name
        compared += 1
        for x, y in zip(a["choices"], b["choices"], strict=True):
            _same_logprobs(x.get("logprobs"), y.get("logprobs"), row.name)
            _same_logprobs(x.get("prompt_logprobs"), y.get("prompt_logprobs"), row.name)
    assert compared >= 15


def _same_logprobs(x, y, name: str) -> None:
    """Equal structure and tokens; values equal to float32 noise (two engines, same model)."""
    if isinstance(x, dict) and isinstance(y, dict):
        assert set(x) == set(y), (name, set(x) ^ set(y))
        for key in x:
            _same_logprobs(x[key], y[key], name)
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), name
        for u, v in zip(x, y, strict=True):
            _same_logprobs(u, v, name)
    elif isinstance(x, float) or isinstance(y, float):
        assert x == pytest.approx(y, abs=5e-3), name
    else:
        assert x == y, name


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
