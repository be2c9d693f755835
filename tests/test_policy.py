"""The draft-length policy (pure logic)."""

from functools import partial

import pytest

from tandem.cluster.config import DraftLengthConfig
from tandem.speculation.policy import draft_length

pytestmark = pytest.mark.timeout(120)


def test_full_k_then_shrinking_then_off():
    k = partial(draft_length, DraftLengthConfig(full_until_batch=4, off_above_batch=12))
    assert [k(4, b) for b in (1, 4)] == [4, 4]
    shrinking = [k(4, b) for b in range(5, 13)]
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[-1] == 1
    assert k(4, 13) == 0
    assert k(0, 1) == 0
