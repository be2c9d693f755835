"""Token Recycling's table: updates from the target's candidates, chains, a fixed size."""

import numpy as np
import pytest

from tandem.speculation.recycle import EMPTY, RecycleTable

pytestmark = pytest.mark.timeout(120)


def test_latest_candidates_replace_the_row():
    table = RecycleTable(vocab_size=10, top_k=3)
    table.update([(1, (2, 3, 4, 5)), (2, (3,))])
    assert table.table[1].tolist() == [2, 3, 4]
    assert table.table[2].tolist() == [3, EMPTY, EMPTY]
    table.update([(1, (6, 7))])
    assert table.table[1].tolist() == [6, 7, EMPTY]


def test_committed_tokens_move_to_the_front():
    table = RecycleTable(vocab_size=10, top_k=3)
    table.update([(1, (2, 3, 4))])
    table.observe(1, [4, 9])  # the target chose 4 after 1, then 9 after 4
    assert table.table[1].tolist() == [4, 2, 3]
    assert table.table[4].tolist() == [9, EMPTY, EMPTY]


def test_chain_follows_best_candidates_until_unknown():
    table = RecycleTable(vocab_size=10, top_k=2)
    assert table.chain(1, 4) == []  # knows nothing: no draft
    table.update([(1, (2, 5)), (2, (3, 6)), (3, (4,))])
    assert table.chain(1, 4) == [2, 3, 4]
    assert table.chain(1, 2) == [2, 3]


def test_fixed_size_whatever_the_traffic():
    table = RecycleTable(vocab_size=100, top_k=4)
    before = table.table.nbytes
    rng = np.random.default_rng(0)
    for _ in range(1000):
        table.update([(int(rng.integers(100)), tuple(rng.integers(100, size=6).tolist()))])
    assert table.table.nbytes == before == 100 * 4 * 4
