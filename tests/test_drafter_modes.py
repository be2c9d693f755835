"""The Drafter's suffix, recycle and controlled modes, through the protocol's DraftItems."""

import pytest

from tandem.speculation.controlled import ControlledDrafter
from tandem.speculation.drafter import Drafter
from tandem.speculation.protocol import DraftItem, Mode
from tandem.speculation.recycle import RecycleTable

pytestmark = pytest.mark.timeout(120)


def draft(drafter, rid, start, tokens, mode, k=4, candidates=()):
    item = DraftItem(rid, start, tuple(tokens), k, mode, tuple(candidates))
    return list(drafter.draft([item])[0].tokens)


def test_modes_offered_follow_the_parts():
    assert Drafter().modes() == [Mode.NGRAM, Mode.SUFFIX]
    controlled = ControlledDrafter({}, 0.5, 0.0, vocab_size=10)
    full = Drafter(recycle=RecycleTable(10), controlled=controlled)
    assert full.modes() == [Mode.NGRAM, Mode.SUFFIX, Mode.RECYCLE, Mode.CONTROLLED]


def test_suffix_drafts_from_the_request_then_from_finished_outputs():
    drafter = Drafter()
    # the prompt repeats itself: the request's own trie drafts the continuation
    assert draft(drafter, "a", 0, [1, 2, 3, 4, 9, 1, 2], Mode.SUFFIX, k=2) == [3, 4]
    draft(drafter, "a", 7, [3, 4, 50, 51, 52, 53], Mode.SUFFIX)
    drafter.free(["a"])
    # only a's output (after its prompt [1, 2, 3, 4, 9, 1]) joined the shared trie
    assert 9 not in drafter.shared.trie.root.children
    assert draft(drafter, "b", 0, [7, 7, 50], Mode.SUFFIX, k=3) == [51, 52, 53]


def test_recycle_learns_from_every_mode_and_drafts_chains():
    drafter = Drafter(recycle=RecycleTable(100, top_k=2))
    assert draft(drafter, "a", 0, [1, 2, 3], Mode.RECYCLE) == []  # knows nothing yet
    # an ngram request feeds the shared table: candidates, then its committed output
    draft(drafter, "b", 0, [5, 6], Mode.NGRAM, candidates=[(6, (7, 8)), (7, (8,))])
    draft(drafter, "b", 2, [7, 8, 9], Mode.NGRAM)
    assert drafter.recycle.table[8].tolist() == [9, -1]  # committed 9 after 8
    assert draft(drafter, "a", 3, [6], Mode.RECYCLE) == [7, 8, 9]
    # prompt text is the user's, not the target's choice: not learnt
    draft(drafter, "c", 0, [40, 41, 42], Mode.NGRAM)
    assert drafter.recycle.table[40].tolist() == [-1, -1]
    assert drafter.recycle.table[41].tolist() == [42, -1]  # the first output token


def test_controlled_mode_dispatches_to_the_known_continuation():
    controlled = ControlledDrafter({(1, 2): [3, 4, 5, 6, 7]}, 1.0, 0.0, vocab_size=10)
    drafter = Drafter(controlled=controlled)
    assert draft(drafter, "a", 0, [1, 2, 3], Mode.CONTROLLED, k=3) == [4, 5, 6]
