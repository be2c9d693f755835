"""Mode `auto` end to end on the shared SPECULATING service (the EAGLE-3 head tandem ships, and
every lookup source): lossless with 8 concurrent streams, and each request's drafts come from
the source that suits its text, as its per-source figures show (GetStats sums them).
Greedy equality at batch 1 is test_speculation's, seeded equality test_sampling's."""

from __future__ import annotations

import asyncio

import pytest

from tandem.client import AsyncTandemClient, TandemClient
from tests.support.prompts import spec_bench_prompts
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.uses_service(SPECULATING)]

MAX_TOKENS = 48
CATEGORIES = ("writing", "coding", "qa", "summarization", "translation", "rag", "math_reasoning")
PASSAGE = (
    "The committee met on Tuesday to review the budget for the new library. After a long "
    "discussion, it approved the funds for the roof, the heating and the children's room, and "
    "asked the architect to return in March with revised plans for the entrance."
)
COPY_HEAVY = f"Repeat this paragraph word for word:\n\n{PASSAGE}\n\nRepeat it:"
FREE_FORM = "Write a short poem about a fox who learns to sing."


@pytest.fixture(scope="module")
def service(services):
    return services.get(SPECULATING)


@pytest.fixture(scope="module")
def client(service):
    with TandemClient(service.address, timeout=300) as c:
        yield c


def test_eight_streams_equal_the_target_alone(service, client):
    prompts = spec_bench_prompts(8, CATEGORIES)
    expected = [
        list(client.generate(p, temperature=0, max_tokens=MAX_TOKENS, speculation="off").token_ids)
        for p in prompts
    ]

    async def run():
        async with AsyncTandemClient(service.address, timeout=600) as aclient:
            return await asyncio.gather(
                *(
                    aclient.generate(p, temperature=0, max_tokens=MAX_TOKENS, speculation="auto")
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


def test_lookup_drafts_a_copy_and_the_head_drafts_free_text(client):
    before = client.stats().speculation.sources
    copy = client.generate(COPY_HEAVY, temperature=0, max_tokens=MAX_TOKENS, speculation="auto")
    free = client.generate(FREE_FORM, temperature=0, max_tokens=MAX_TOKENS, speculation="auto")
    assert copy.speculation.mode == free.speculation.mode == "auto"
    lookup, head = drafted_by(copy), drafted_by(free)
    looked_up = lookup.get("ngram", 0) + lookup.get("suffix", 0)
    assert looked_up > 2 * lookup.get("eagle", 0), lookup
    assert head.get("eagle", 0) > head.get("ngram", 0) + head.get("suffix", 0), head
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
