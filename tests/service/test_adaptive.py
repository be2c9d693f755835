"""The adaptive draft length on the real service (speculation.draft_length.adaptive): every
request drafts a length of its own that changes from step to step, and the output stays the
target's, greedy and seeded. How the length is chosen is tested in test_policy and test_session."""

from __future__ import annotations

import pytest

from tandem.client import TandemClient
from tests.support.prompts import spec_bench_prompts
from tests.support.services import start_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CATEGORIES = ("writing", "extraction", "translation")


@pytest.fixture(scope="module")
def service():
    yield from start_service({"speculation": {"draft_length": {"adaptive": True}}})


@pytest.fixture(scope="module")
def client(service):
    with TandemClient(service.address, timeout=300) as c:
        yield c


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 3}])
def test_output_is_the_targets_while_the_length_adapts(client, sampling):
    drafted = rejected = 0
    for prompt in [spec_bench_prompts(1, (c,))[0] for c in CATEGORIES]:
        kwargs = {**sampling, "max_tokens": 48}
        expected = list(client.generate(prompt, speculation="off", **kwargs).token_ids)
        result = client.generate(prompt, speculation="ngram", **kwargs)
        assert list(result.token_ids) == expected, (prompt, sampling)
        drafted += result.speculation.draft_tokens
        rejected += result.speculation.draft_tokens - result.speculation.accepted_tokens
    assert drafted > 0 and rejected > 0
