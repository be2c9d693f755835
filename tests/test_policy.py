"""The draft-length policy (pure logic)."""

import pytest

from tandem.speculation.policy import DraftLengthPolicy

pytestmark = pytest.mark.timeout(120)


def test_full_k_then_shrinking_then_off():
    policy = DraftLengthPolicy(full_until=4, off_above=12)
    assert [policy.k(4, b) for b in (1, 4)] == [4, 4]
    shrinking = [policy.k(4, b) for b in range(5, 13)]
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[-1] == 1
    assert policy.k(4, 13) == 0
    assert policy.k(0, 1) == 0
