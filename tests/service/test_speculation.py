"""Remote drafting for real, on the built-in default config (every drafter kind provisioned):
lossless in every mode (auto also with 8 streams, and drafting from the source that suits the
text), figures reported per request, per source and in GetStats."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import pytest

from tandem.client import AsyncTandemClient, TandemClient
from tandem.protos import tandem_pb2 as pb
from tests.support.prompts import spec_bench_prompts
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.uses_service(SPECULATING)]

MODES = ("ngram", "suffix", "recycle", "model", "hybrid", "auto")
CATEGORIES = ("writing", "coding", "math_reasoning", "summarization", "translation", "rag")

# Mode auto: a copy-heavy prompt (lookups should draft it) and a free-form one (the head).
PASSAGE = (
    "The committee met on Tuesday to review the budget for the new library. After a long "
    "discussion, it approved the funds for the roof, the heating and the children's room, and "
    "asked the architect to return in March with revised plans for the entrance."
)
COPY_HEAVY = f"Repeat this paragraph word for word:\n\n{PASSAGE}\n\nRepeat it:"
FREE_FORM = "Write a short poem about a fox who learns to sing."
MODE_TOKENS = 40  # per prompt in the per-mode greedy test: 6 prompts x 6 modes


# Every part that touches drafts is on, so that the greedy tests below hold with all of them
# (SPECULATING: the speculation cache, the Mirror-SD channel, the model drafter's SpecDec++ stop).
# The draft-length policy stays out, so that batches carry drafts too.
@pytest.fixture(scope="module")
def service(services):
    return services.get(SPECULATING)


@pytest.fixture(scope="module")
def client(service):
    with TandemClient(service.address, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def prompts():
    return [spec_bench_prompts(1, (category,))[0] for category in CATEGORIES]


@pytest.fixture(scope="module")
def target_only(client, prompts):
    return [
        list(client.generate(p, temperature=0, max_tokens=MODE_TOKENS, speculation="off").token_ids)
        for p in prompts
    ]


@pytest.mark.parametrize("mode", MODES)
def test_greedy_equals_target_only(client, prompts, target_only, mode):
    drafted = accepted = 0
    for prompt, expected in zip(prompts, target_only, strict=True):
        result = client.generate(prompt, temperature=0, max_tokens=MODE_TOKENS, speculation=mode)
        assert list(result.token_ids) == expected, (mode, prompt)
        spec = result.speculation
        assert spec.mode == mode
        assert spec.target_steps * spec.mean_accepted_length == pytest.approx(len(expected))
        assert spec.target_steps + spec.accepted_tokens == len(expected)
        drafted += spec.draft_tokens
        accepted += spec.accepted_tokens
    assert drafted > 0 and accepted > 0  # the drafts were real, and some were right


def test_default_mode_is_auto_and_k_is_per_request(client):
    prompt = "Repeat after me: red green blue, red green blue, red green blue."
    default = client.generate(prompt, temperature=0, max_tokens=32)
    assert default.speculation.mode == "auto" and default.speculation.draft_tokens > 0
    one = client.generate(prompt, temperature=0, max_tokens=32, num_speculative_tokens=1)
    assert list(one.token_ids) == list(default.token_ids)
    assert one.speculation.draft_tokens <= one.speculation.target_steps
    off = client.generate(prompt, temperature=0, max_tokens=32, num_speculative_tokens=0)
    assert off.speculation.mode == "off" and off.speculation.draft_tokens == 0
    assert off.speculation.mean_accepted_length == 1.0


def test_streamed_final_chunk_and_stats_carry_the_figures(client):
    chunks = list(client.stream("Name the planets.", temperature=0, max_tokens=24))
    assert not chunks[0].HasField("speculation") or chunks[0].speculation.target_steps == 0
    last = chunks[-1].speculation
    assert last.mode == "auto" and last.target_steps > 0
    stats = client.stats()
    assert stats.speculation.draft_tokens >= stats.speculation.accepted_tokens > 0
    assert 0 < stats.speculation.acceptance_rate <= 1
    assert stats.speculation.mean_accepted_length > 1
    assert stats.drafter_rtt_mean_s > 0 and stats.target_step_mean_s > 0
    assert [d.replica_id for d in stats.drafters] == ["drafter-0"]


def test_pipelining_hits_the_speculation_cache_and_changes_no_token(client):
    prompt = "Count from 1 to 40, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    runs = {
        pipelined: client.generate(prompt, temperature=0, max_tokens=64, pipelined=pipelined)
        for pipelined in (False, True)
    }
    assert list(runs[True].token_ids) == list(runs[False].token_ids)
    sequential, pipelined = runs[False].speculation, runs[True].speculation
    assert sequential.cache_hits == sequential.cache_misses == 0
    assert pipelined.cache_hits > 0  # drafts served without a round trip
    assert client.stats().speculation.cache_hits >= pipelined.cache_hits


@pytest.mark.parametrize(
    "penalties",
    [{"presence_penalty": 0.6}, {"frequency_penalty": 0.1}, {"repetition_penalty": 1.05}],
)
def test_penalised_requests_draft_and_keep_the_targets_output(client, penalties):
    # Penalties read the tokens before each position, drafted ones included: the verifier
    # applies them per position, so drafts flow and the output is the target's own (greedy,
    # and seeded sampling through tandem's sampler).
    prompt = "Repeat this list three times: apple, banana, cherry, date, fig, grape."
    drafted = accepted = 0
    for sampling in ({"temperature": 0}, {"temperature": 0.7, "seed": 1}):
        kwargs = {**sampling, **penalties, "max_tokens": 48}
        expected = list(client.generate(prompt, speculation="off", **kwargs).token_ids)
        result = client.generate(prompt, speculation="ngram", **kwargs)
        assert list(result.token_ids) == expected, (penalties, sampling)
        drafted += result.speculation.draft_tokens
        accepted += result.speculation.accepted_tokens
    assert drafted > 0 and accepted > 0


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"num_speculative_tokens": 5}, "OUT_OF_RANGE", "speculation.num_speculative_tokens"),
        ({"num_speculative_tokens": -1}, "OUT_OF_RANGE", "speculation.num_speculative_tokens"),
    ],
)
def test_bad_speculation_settings(client, kwargs, code, field):
    with pytest.raises(grpc.RpcError) as info:
        client.generate("hi", max_tokens=4, **kwargs)
    assert info.value.code() == grpc.StatusCode[code]
    assert field in info.value.details()


def test_unknown_mode_value_is_refused(client):
    request = pb.GenerateRequest(text="hi", speculation=pb.SpeculationParams(mode=42))
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Generate(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "speculation.mode" in info.value.details()


def test_cli_generate_reports_speculation(service):
    run = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "generate", "Say hello twice."]
        + ["--address", service.address, "--temperature", "0", "--max-tokens", "16"]
        + ["--speculation", "hybrid", "--num-speculative-tokens", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    spec = json.loads(run.stdout)["speculation"]
    assert spec["mode"] == "hybrid"
    assert set(spec) >= {"draft_tokens", "accepted_tokens", "acceptance_rate", "sources"}
    assert set(spec["sources"]) <= {"ngram", "model"}  # hybrid's drafts are ngram's or model's
    assert sum(s["draft_tokens"] for s in spec["sources"].values()) <= spec["draft_tokens"]
    assert spec["mean_accepted_length"] >= 1


def test_auto_with_eight_streams_equals_the_target_alone(service, client):
    prompts = spec_bench_prompts(8, (*CATEGORIES, "qa"))
    expected = [
        list(client.generate(p, temperature=0, max_tokens=48, speculation="off").token_ids)
        for p in prompts
    ]

    async def run():
        async with AsyncTandemClient(service.address, timeout=600) as aclient:
            return await asyncio.gather(
                *(
                    aclient.generate(p, temperature=0, max_tokens=48, speculation="auto")
                    for p in prompts
                )
            )

    results = asyncio.run(run())
    for prompt, want, result in zip(prompts, expected, results, strict=True):
        assert list(result.token_ids) == want, prompt
    drafted = sum(r.speculation.draft_tokens for r in results)
    accepted = sum(r.speculation.accepted_tokens for r in results)
    assert drafted > 0 and accepted > 0


def drafted_by(result) -> dict[str, int]:
    return {name: s.draft_tokens for name, s in result.speculation.sources.items()}


def test_auto_drafts_a_copy_by_lookup_and_free_text_by_the_head(client):
    before = client.stats().speculation.sources
    copy = client.generate(COPY_HEAVY, temperature=0, max_tokens=48, speculation="auto")
    free = client.generate(FREE_FORM, temperature=0, max_tokens=48, speculation="auto")
    assert copy.speculation.mode == free.speculation.mode == "auto"
    lookup, head = drafted_by(copy), drafted_by(free)
    looked_up = lookup.get("ngram", 0) + lookup.get("suffix", 0)
    assert looked_up > 2 * lookup.get("eagle", 0), lookup
    # free text: the head drafts a real share, far more than on the copy (not all: the default
    # model's free text soon repeats its own lines, and then prompt lookup drafts them, rightly)
    share = head.get("eagle", 0) / sum(head.values())
    assert head.get("eagle", 0) >= 8 and share > 2 * lookup.get("eagle", 0) / sum(lookup.values())
    # per source, the request's drafted tokens add up to its total (accepted ones are counted
    # by the verifications' outcomes, before vLLM cuts the last run at max_tokens)
    for result in (copy, free):
        spec = result.speculation
        assert sum(s.draft_tokens for s in spec.sources.values()) == spec.draft_tokens
        assert all(0 <= s.accepted_tokens <= s.draft_tokens for s in spec.sources.values())
    # GetStats sums them over requests
    after = client.stats().speculation.sources
    for name, drafted in {**lookup, **head}.items():
        old = before[name].draft_tokens if name in before else 0
        assert after[name].draft_tokens - old >= drafted
