"""The draft-length policy (pure logic)."""

from functools import partial

import pytest

from tandem.speculation.policy import (
    PROBE_EVERY,
    Acceptance,
    best_length,
    draft_length,
    expected_tokens,
)
from tandem.speculation.settings import DraftLengthConfig

pytestmark = pytest.mark.timeout(120)


def test_full_k_then_shrinking_then_off():
    k = partial(draft_length, DraftLengthConfig(full_until_batch=4, off_above_batch=12))
    assert [k(4, b) for b in (1, 4)] == [4, 4]
    shrinking = [k(4, b) for b in range(5, 13)]
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[-1] == 1
    assert k(4, 13) == 0
    assert k(0, 1) == 0


def test_the_best_length_follows_alpha_and_the_cost_of_verifying():
    assert best_length(0.0, 4, 0.07) == 0  # drafts that always fail only cost
    assert best_length(0.13, 4, 0.07) == 1  # temperature 1.0 with ngram on the CPU
    assert best_length(0.9, 4, 0.07) == 4
    assert best_length(0.5, 4, 0.0) == 4  # free verification: always the full k
    assert best_length(0.9, 4, 10.0) == 0  # verification dearer than what it saves
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_acceptance_falls_with_rejections_and_probes_while_drafting_nothing():
    acceptance = Acceptance()
    assert acceptance.length(4, 0.07) == 3  # alpha 0.5 until shown otherwise
    for _ in range(20):
        acceptance.observe(0, 4)
    assert acceptance.alpha < 0.2
    lengths = [acceptance.length(4, 0.07) for _ in range(2 * PROBE_EVERY)]
    assert lengths == ([0] * (PROBE_EVERY - 1) + [1]) * 2  # one-token probes
    for _ in range(20):
        acceptance.observe(1, 1)  # the probes are accepted: the text turned repetitive
    assert acceptance.alpha > 0.8 and acceptance.length(4, 0.07) == 4
