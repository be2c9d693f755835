"""SuffixDecoding's tries: longest match, frequency-sized drafts, the shared trie's budget."""

import time

import pytest

from tandem.speculation.source import History
from tandem.speculation.suffix import GlobalSuffixes, RequestSuffixes, SuffixSource, SuffixTrie

pytestmark = pytest.mark.timeout(120)


def request(tokens):
    return History("r", list(tokens))


def source(max_pattern=8, min_prob=0.1, shared=()):
    """A suffix source of depth 8 whose shared trie holds `shared` outputs."""
    made = SuffixSource(max_depth=8, max_pattern=max_pattern, min_prob=min_prob, global_tokens=1000)
    for output in shared:
        made.shared.add(output)
    return made


def test_longest_match_wins():
    # [3, 1, 2] occurred once (-> 4); the shorter [1, 2] is followed by 9 more often
    r = request([3, 1, 2, 4, 1, 2, 9, 1, 2, 9, 3, 1, 2])
    assert source(min_prob=0.0).propose(r, (), 1) == [4]


def test_draft_is_sized_by_frequency():
    # after [5]: 6 twice, 7 once -> p(6) = 2/3; after [5, 6]: 1 or 2 -> 1/3 (then certain)
    r = request([5, 6, 1, 5, 6, 2, 5, 7, 0, 5])
    assert source(max_pattern=1, min_prob=0.5).propose(r, (), 4) == [6]
    assert source(max_pattern=1, min_prob=0.3).propose(r, (), 4) == [6, 1, 5, 6]
    assert source(max_pattern=1, min_prob=0.7).propose(r, (), 4) == []
    # a continuation seen every time is drafted whole, up to k
    r = request([1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 5, 9, 1])
    assert source(min_prob=0.9).propose(r, (), 4) == [2, 3, 4, 5]
    assert source(min_prob=0.9).propose(r, (), 2) == [2, 3]


def test_no_match_no_draft():
    assert source().propose(request([1, 2, 3]), (), 4) == []
    assert source().propose(request([1, 2, 1]), (), 0) == []


def test_global_trie_is_fed_by_finished_outputs_and_wins_on_better_evidence():
    drafter = source(min_prob=0.5, shared=[[7, 8, 9, 10]] * 3)
    r = request([1, 7])  # the request itself has never seen 7 continue
    assert drafter.propose(r, (), 3) == [8, 9, 10]
    # its own evidence, when stronger, beats the shared trie's
    r = request([7, 1, 1, 7, 1, 1, 7, 1, 1, 7])
    drafter.shared.add([7, 2])
    assert drafter.propose(r, (), 2) == [1, 1]


def test_global_budget_evicts_the_oldest_and_prunes_its_nodes():
    shared = GlobalSuffixes(4, max_tokens=6)
    shared.add([1, 2, 3])
    shared.add([4, 5, 6])
    assert shared.size == 6 and 1 in shared.trie.root.children
    shared.add([7, 8])  # over budget: [1, 2, 3] goes, and every node only it had
    assert shared.size == 5
    assert set(shared.trie.root.children) == {4, 5, 6, 7, 8}
    shared.add([4, 5])
    assert shared.trie.root.children[4].count == 1  # [4, 5, 6] evicted, the new [4, 5] counted
    shared.add(list(range(20, 40)))  # longer than the budget: only its last 6 tokens are kept
    assert shared.size == 6 and set(shared.trie.root.children) == set(range(34, 40))


def count_nodes(node):
    return 1 + sum(count_nodes(child) for child in node.children.values())


def test_depth_bounds_memory_and_appending_is_incremental():
    tokens = [i % 50 for i in range(2000)]
    small, big = RequestSuffixes(4), RequestSuffixes(4)
    small.extend(tokens[:1000])
    big.extend(tokens)
    assert count_nodes(big.trie.root) <= 4 * 2000 + 1

    # the cost of one more token does not grow with the history
    def append_time(r):
        start = time.perf_counter()
        for token in range(100):
            r.extend([token])
        return time.perf_counter() - start

    assert append_time(big) < 3 * append_time(small) + 0.01


def test_remove_undoes_add():
    trie = SuffixTrie(3)
    active = [trie.root]
    for token in [1, 2, 1, 2]:
        active = trie.add(active, token)
    trie.remove([1, 2, 1, 2])
    assert trie.root.children == {}
