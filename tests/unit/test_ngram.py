"""Prompt lookup over one request's tokens."""

import pytest

from tandem.speculation.ngram import NgramIndex

pytestmark = pytest.mark.timeout(120)


def index(tokens, min_n=1, max_n=4):
    idx = NgramIndex(min_n, max_n)
    idx.extend(tokens)
    return idx


def test_continues_the_latest_earlier_match():
    # suffix [1, 2] occurred twice before; the latest occurrence (followed by 8, 9) wins
    assert index([1, 2, 7, 7, 1, 2, 8, 9, 5, 1, 2]).propose(2) == [8, 9]


def test_longest_match_first():
    # [3, 1, 2] matches at the start (-> 4); the shorter [1, 2] would match later (-> 9)
    assert index([3, 1, 2, 4, 5, 1, 2, 9, 3, 1, 2]).propose(1) == [4]


def test_never_matches_the_suffix_with_itself():
    assert index([1, 2, 3]).propose(3) == []
    assert index([5, 5]).propose(3) == [5]


def test_draft_is_cut_at_k_and_at_the_end():
    idx = index([1, 2, 3, 4, 1])
    assert idx.propose(2) == [2, 3]
    assert idx.propose(10) == [2, 3, 4, 1]
    assert idx.propose(0) == []


def test_incremental_extend_equals_one_shot():
    tokens = [4, 1, 2, 3, 1, 2, 4, 1, 2, 3, 9, 4, 1]
    one = index(tokens)
    inc = NgramIndex()
    for t in tokens:
        inc.extend([t])
    assert inc.propose(4) == one.propose(4) == [2, 3, 9, 4]


def test_min_n_is_respected():
    assert index([1, 9, 1], min_n=2).propose(1) == []
    with pytest.raises(ValueError):
        NgramIndex(3, 2)
