"""The whole service for real: `tandem serve` with embedded Ray, a vLLM target actor, gRPC."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.client import AsyncTandemClient, TandemClient, build_request
from tandem.protos import tandem_pb2 as pb
from tests.support.prompts import spec_bench_prompts
from tests.support.reliability import wait_until_idle
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.uses_service(SPECULATING)]

MAX_INFLIGHT = SPECULATING["server"]["max_inflight"]  # 64; max_tokens 1024, default 48


@pytest.fixture(scope="module")
def service(services):
    return services.get(SPECULATING)


@pytest.fixture(scope="module")
def client(service):
    with TandemClient(service.address, timeout=300) as c:
        yield c


def test_greedy_matches_transformers(client, model_path, tokenizer):
    """vLLM behind Ray and gRPC decodes exactly what HF transformers decodes greedily."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    for prompt in spec_bench_prompts(4):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=32, do_sample=False)
        expected = out[0, ids.shape[1] :].tolist()
        got = client.generate(prompt, temperature=0, max_tokens=32)
        assert list(got.token_ids) == expected, prompt
        assert got.text == tokenizer.decode(expected, skip_special_tokens=True)


def test_stream_concatenates_to_unary(client):
    prompt = spec_bench_prompts(1, ("coding",))[0]
    unary = client.generate(prompt, temperature=0, max_tokens=40)
    chunks = list(client.stream(prompt, temperature=0, max_tokens=40))
    assert len(chunks) > 1
    assert [t for c in chunks for t in c.token_ids] == list(unary.token_ids)
    assert "".join(c.text for c in chunks) == unary.text
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == unary.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 40 == unary.usage.completion_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + 40
    assert 0 < last.timings.time_to_first_token_s < last.timings.total_s
    assert last.timings.time_per_output_token_s > 0


def test_text_and_token_prompts(client, tokenizer):
    ids = tokenizer.encode("The capital of France is")
    by_text = client.generate("The capital of France is", chat=False, temperature=0, max_tokens=8)
    by_ids = client.generate(ids, temperature=0, max_tokens=8)
    assert list(by_text.token_ids) == list(by_ids.token_ids)
    assert by_text.usage.prompt_tokens == len(ids)


def test_stop_strings_tokens_and_seeded_sampling(client, tokenizer):
    prompt = "List three colours, one per line."
    full = client.generate(prompt, temperature=0, max_tokens=40)
    assert "\n" in full.text
    cut = client.generate(prompt, temperature=0, max_tokens=40, stop=["\n"])
    assert cut.finish_reason == pb.FINISH_REASON_STOP
    assert cut.text == full.text.split("\n")[0]
    stop_id = full.token_ids[3]
    by_id = client.generate(prompt, temperature=0, max_tokens=40, stop_token_ids=[stop_id])
    assert list(by_id.token_ids) == list(full.token_ids[:4])
    a, b = (client.generate(prompt, temperature=1.0, seed=11, max_tokens=24) for _ in range(2))
    assert list(a.token_ids) == list(b.token_ids)
    long = client.generate("Say hi.", temperature=0, max_tokens=60, ignore_eos=True)
    assert long.usage.completion_tokens == 60


def test_eight_concurrent_streams(service, client):
    prompts = spec_bench_prompts(8, ("writing", "coding", "math", "qa"))
    expected = [list(client.generate(p, temperature=0, max_tokens=24).token_ids) for p in prompts]

    async def run_all():
        async with AsyncTandemClient(service.address, timeout=300) as aclient:

            async def one(prompt):
                ids = []
                async for chunk in aclient.stream(prompt, temperature=0, max_tokens=24):
                    ids += chunk.token_ids
                return ids, chunk.finish_reason

            return await asyncio.gather(*(one(p) for p in prompts))

    results = asyncio.run(run_all())
    assert [ids for ids, _ in results] == expected
    assert all(reason != pb.FINISH_REASON_UNSPECIFIED for _, reason in results)


BAD_REQUESTS = [
    (pb.GenerateRequest(), "INVALID_ARGUMENT", "prompt"),
    (pb.GenerateRequest(text=""), "INVALID_ARGUMENT", "prompt"),
    (build_request([]), "INVALID_ARGUMENT", "prompt"),
    (build_request("x " * 3000, chat=False), "OUT_OF_RANGE", "prompt"),
    (build_request("hi", max_tokens=0), "INVALID_ARGUMENT", "sampling.max_tokens"),
    (build_request("hi", max_tokens=-3), "INVALID_ARGUMENT", "sampling.max_tokens"),
    (build_request("hi", max_tokens=1025), "OUT_OF_RANGE", "sampling.max_tokens"),
    (build_request("hi", temperature=-1), "INVALID_ARGUMENT", "sampling.temperature"),
    (build_request("hi", temperature=math.nan), "INVALID_ARGUMENT", "sampling.temperature"),
    (build_request("hi", temperature=math.inf), "INVALID_ARGUMENT", "sampling.temperature"),
    (build_request("hi", top_p=0), "INVALID_ARGUMENT", "sampling.top_p"),
    (build_request("hi", top_p=1.5), "INVALID_ARGUMENT", "sampling.top_p"),
    (build_request([{"role": "robot", "content": "x"}]), "INVALID_ARGUMENT", "role"),
    (build_request([1, 2, 49152]), "OUT_OF_RANGE", "prompt.token_ids[2]"),
    (build_request([5, -1]), "OUT_OF_RANGE", "prompt.token_ids[1]"),
    (build_request("hi", stop_token_ids=[10**6]), "OUT_OF_RANGE", "sampling.stop_token_ids"),
    (build_request("hi", request_id="x" * 300), "INVALID_ARGUMENT", "request_id"),
    (build_request("hi", presence_penalty=2.5), "INVALID_ARGUMENT", "sampling.presence_penalty"),
    (build_request("hi", repetition_penalty=0), "INVALID_ARGUMENT", "sampling.repetition_penalty"),
    (build_request("hi", min_p=1.5), "INVALID_ARGUMENT", "sampling.min_p"),  # exact sampler: range
    (build_request("hi", logit_bias={5: 1.0}), "INVALID_ARGUMENT", "sampling.logit_bias"),
    (build_request("hi", logprobs=21), "INVALID_ARGUMENT", "sampling.logprobs"),
    (build_request("hi", max_tokens=4, min_tokens=5), "INVALID_ARGUMENT", "sampling.min_tokens"),
]


def test_vllm_sampling_fields_are_honoured(client, tokenizer):
    """Penalties change the output and a speculating request keeps the target's; min_tokens
    holds; logprobs come per token and prompt_logprobs per prompt token after the first."""
    prompt = "Repeat exactly, five times: red green blue red green blue red green blue."
    penalties = dict(presence_penalty=0.5, frequency_penalty=0.7, repetition_penalty=1.3)
    greedy = dict(temperature=0, max_tokens=40)
    plain = client.generate(prompt, speculation="off", **greedy)
    alone = client.generate(prompt, speculation="off", **greedy, **penalties)
    # Measured here: with penalties set, no drafts reach verification (0 draft tokens in ngram
    # and recycle mode); what is checked is that a speculating request keeps the target's
    # penalized output. Why the drafts stop is open (reported with issue 16).
    drafted = client.generate(prompt, speculation="recycle", **greedy, **penalties)
    assert list(drafted.token_ids) == list(alone.token_ids) != list(plain.token_ids)

    short = client.generate("Reply with one word: yes or no?", temperature=0, max_tokens=20)
    assert short.usage.completion_tokens < 10, short.text
    held = client.generate(
        "Reply with one word: yes or no?", temperature=0, max_tokens=20, min_tokens=10
    )
    assert held.usage.completion_tokens >= 10
    assert tokenizer.eos_token_id not in list(held.token_ids)[:10]

    scored = client.generate(prompt, temperature=0, max_tokens=8, logprobs=3, prompt_logprobs=1)
    assert [p.token.token_id for p in scored.logprobs] == list(scored.token_ids)
    assert all(p.token.rank == 1 and len(p.top) >= 3 for p in scored.logprobs)  # greedy
    assert len(scored.prompt_logprobs) == scored.usage.prompt_tokens - 1
    assert all(p.token.logprob <= 0 for p in scored.prompt_logprobs)
    streamed = list(client.stream(prompt, temperature=0, max_tokens=8, logprobs=0))
    assert [p.token.token_id for c in streamed for p in c.logprobs] == list(scored.token_ids)


@pytest.mark.parametrize(("request_", "code", "field"), BAD_REQUESTS)
def test_bad_input_gets_a_clear_status(client, request_, code, field):
    for call in (client.stub.Generate, lambda r: list(client.stub.GenerateStream(r))):
        with pytest.raises(grpc.RpcError) as info:
            call(request_)
        assert info.value.code() == grpc.StatusCode[code]
        assert field in info.value.details()
    # ...and the server goes on serving.
    assert client.generate("Say hi.", temperature=0, max_tokens=4).usage.completion_tokens == 4


def test_cancelled_stream_is_aborted_in_the_engine(client):
    call = client.stub.GenerateStream(build_request("Tell a long story.", max_tokens=1000))
    first = next(call)
    assert first.request_id
    assert client.stats().requests_in_flight == 1
    call.cancel()
    stats = wait_until_idle(client)
    assert stats.requests_in_flight == 0
    assert [r.engine_unfinished for r in stats.replicas] == [0]


def test_deadline_frees_the_engine(client):
    before = client.stats().requests_aborted
    request = build_request("Tell a long story.", max_tokens=1000, ignore_eos=True)
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Generate(request, timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stats = wait_until_idle(client)
    assert [r.engine_unfinished for r in stats.replicas] == [0]
    assert stats.requests_aborted == before + 1


def test_abort_and_too_many_in_flight(service, client):
    """Fill every in-flight slot, get RESOURCE_EXHAUSTED, then Abort frees them all."""

    async def scenario():
        async with AsyncTandemClient(service.address, timeout=300) as aclient:
            calls = [
                aclient.stub.GenerateStream(
                    build_request("Count.", request_id=f"long-{i}", max_tokens=999, ignore_eos=True)
                )
                for i in range(MAX_INFLIGHT)
            ]
            for call in calls:  # every request has started once its first chunk arrives
                await call.read()
            with pytest.raises(grpc.RpcError) as info:
                await aclient.generate("one more", max_tokens=4)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_inflight" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                await aclient.generate("dup", request_id="long-0", max_tokens=4)
            assert info.value.code() in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.ALREADY_EXISTS,
            )
            assert all([await aclient.abort(f"long-{i}") for i in range(MAX_INFLIGHT)])
            assert not await aclient.abort("no-such-request")
            reasons = []
            for call in calls:
                last = None
                while (chunk := await call.read()) is not grpc.aio.EOF:
                    last = chunk
                reasons.append(last.finish_reason)
            return reasons

    assert asyncio.run(scenario()) == [pb.FINISH_REASON_ABORT] * MAX_INFLIGHT
    stats = wait_until_idle(client)
    assert [r.engine_unfinished for r in stats.replicas] == [0]


def test_duplicate_request_id_is_refused(client):
    call = client.stub.GenerateStream(build_request("Count.", request_id="dup", max_tokens=500))
    next(call)
    with pytest.raises(grpc.RpcError) as info:
        client.generate("again", request_id="dup", max_tokens=4)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    call.cancel()
    wait_until_idle(client)


def test_model_info_and_stats(client):
    info = client.model_info()
    assert info.model == "smollm2-135m-instruct"
    assert info.max_model_len == 2048 and info.vocab_size == 49152
    assert 2 in info.eos_token_ids and info.has_chat_template
    assert info.max_tokens_limit == 1024 and info.replicas == 1
    client.generate("Say hi.", temperature=0, max_tokens=4)
    with pytest.raises(grpc.RpcError):
        client.generate("", chat=False)
    stats = client.stats()
    assert stats.requests_total >= stats.requests_finished > 0
    assert stats.requests_rejected > 0 and stats.generated_tokens > 0
    assert stats.replicas[0].requests_served > 0 and stats.replicas[0].node_id


def test_health_and_reflection(service):
    with grpc.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "tandem.v1.Tandem"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
        assert {"tandem.v1.Tandem", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="tandem.v1.Tandem")
        response = next(stub.ServerReflectionInfo(iter([request])))
        assert response.file_descriptor_response.file_descriptor_proto


def test_cli_generate_json(service, client):
    run = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "generate", "What is Ray?"]
        + ["--address", service.address, "--temperature", "0", "--max-tokens", "12", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert set(out) >= {"token_ids", "text", "finish_reason", "usage", "timings"}
    unary = client.generate("What is Ray?", temperature=0, max_tokens=12)
    assert out["token_ids"] == list(unary.token_ids)
    assert out["usage"]["completion_tokens"] == 12 and out["finish_reason"] == "length"
    streamed = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "generate", "What is Ray?"]
        + ["--address", service.address, "--temperature", "0", "--max-tokens", "12"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert streamed.stdout.strip() == out["text"].strip()
