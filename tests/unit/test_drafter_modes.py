"""The Drafter's sources through the protocol's DraftItems: which modes a setup offers, suffix,
recycle, and a source registered from outside (the bench's controlled acceptance)."""

import pytest

from tandem.benchmarks.controlled_source import ControlledSettings, ControlledSource
from tandem.speculation import registry
from tandem.speculation.drafter import Drafter
from tandem.speculation.ngram import NgramSource
from tandem.speculation.protocol import DraftItem, Mode
from tandem.speculation.recycle import RecycleSource
from tandem.speculation.settings import SpeculationConfig
from tandem.speculation.source import DrafterSetup
from tandem.speculation.suffix import SuffixSource

pytestmark = pytest.mark.timeout(120)


def draft(drafter, rid, start, tokens, mode, k=4, candidates=()):
    item = DraftItem(rid, start, tuple(tokens), k, mode, tuple(candidates))
    return list(drafter.draft([item])[0].tokens)


def test_every_mode_has_a_source_and_a_setup_offers_what_it_provides():
    assert set(registry.factories()) == set(Mode) - {Mode.OFF}
    setup = DrafterSetup(SpeculationConfig(), vocab_size=10)  # no draft model
    drafter = Drafter.from_setup(setup, registry.factories())
    assert drafter.modes() == [Mode.NGRAM, Mode.SUFFIX, Mode.RECYCLE, Mode.AUTO]
    with pytest.raises(ValueError, match="own modes"):
        registry.register(Mode.NGRAM, NgramSource.build)


def test_suffix_drafts_from_the_request_then_from_finished_outputs():
    suffix = SuffixSource()
    drafter = Drafter({"suffix": suffix})
    # the prompt repeats itself: the request's own trie drafts the continuation
    assert draft(drafter, "a", 0, [1, 2, 3, 4, 9, 1, 2], Mode.SUFFIX, k=2) == [3, 4]
    draft(drafter, "a", 7, [3, 4, 50, 51, 52, 53], Mode.SUFFIX)
    drafter.free(["a"])
    # only a's output (after its prompt [1, 2, 3, 4, 9, 1]) joined the shared trie
    assert 9 not in suffix.shared.trie.root.children
    assert draft(drafter, "b", 0, [7, 7, 50], Mode.SUFFIX, k=3) == [51, 52, 53]


def test_recycle_learns_from_every_mode_and_drafts_chains():
    recycle = RecycleSource(100, top_k=2)
    drafter = Drafter({"ngram": NgramSource(), "recycle": recycle})
    assert draft(drafter, "a", 0, [1, 2, 3], Mode.RECYCLE) == []  # knows nothing yet
    # an ngram request feeds the shared table: candidates, then its committed output
    draft(drafter, "b", 0, [5, 6], Mode.NGRAM, candidates=[(6, (7, 8)), (7, (8,))])
    draft(drafter, "b", 2, [7, 8, 9], Mode.NGRAM)
    assert recycle.table.table[8].tolist() == [9, -1]  # committed 9 after 8
    assert draft(drafter, "a", 3, [6], Mode.RECYCLE) == [7, 8, 9]
    # prompt text is the user's, not the target's choice: not learnt
    draft(drafter, "c", 0, [40, 41, 42], Mode.NGRAM)
    assert recycle.table.table[40].tolist() == [-1, -1]
    assert recycle.table.table[41].tolist() == [42, -1]  # the first output token


def test_a_registered_source_serves_its_mode(tmp_path):
    from tandem.benchmarks.controlled_source import save_continuations

    path = tmp_path / "continuations.json"
    save_continuations(path, [((1, 2), [3, 4, 5, 6, 7])])
    settings = ControlledSettings(str(path), alpha=1.0)
    setup = DrafterSetup(SpeculationConfig(), vocab_size=10)
    drafter = Drafter.from_setup(setup, {**registry.factories(), "controlled": settings.build})
    assert isinstance(drafter.sources["controlled"], ControlledSource)
    assert draft(drafter, "a", 0, [1, 2, 3], "controlled", k=3) == [4, 5, 6]
    assert draft(drafter, "a", 0, [1, 2, 3], Mode.NGRAM) == []  # tandem's own still there
