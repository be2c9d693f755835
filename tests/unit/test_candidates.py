"""Lining the target's top candidates up with the tokens it verified (pure logic)."""

import pytest

from tandem.speculation.candidates import verified_candidates

pytestmark = pytest.mark.timeout(120)


def test_rows_follow_requests_and_drafts():
    # request 0: 2 drafts (7, 8), accepted 1 and emitted 5; request 1: prompt just finished;
    # request 2: mid-prompt (nothing sampled); one row each beyond request 0's three.
    token_ids = [[1, 2, 3, 7, 5], [4, 4, 9], [6, 6, 6, 6]]
    rows = [[7, 70], [5, 50], [8, 80], [9, 90], [0, 0]]
    out = verified_candidates(
        rows,
        sampled=[[7, 5], [9], []],
        num_tokens=[5, 3, 4],
        token_ids=token_ids,
        drafts=[[7, 8], [], []],
    )
    assert out[0] == ((3, (7, 70)), (7, (5, 50)), (8, (8, 80)))
    assert out[1] == ((4, (9, 90)),)
    assert out[2] == ()


def test_rows_that_do_not_add_up_give_nothing():
    out = verified_candidates([[1]], [[1]], [2], [[5, 1]], [[3]])
    assert out == [()]


def test_verification_rows_are_each_drafting_requests_last_positions():
    from tandem.speculation.candidates import verification_rows

    # request 0: 3 prompt tokens (no draft); request 1: 1 + 2 drafts; request 2: 1 + 1 draft
    assert verification_rows([3, 6, 8], [[], [5, 6], [7]]) == [3, 4, 5, 6, 7]
