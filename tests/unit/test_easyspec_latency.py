"""The replay loop of benchmarks/easyspec_latency.py, on a scripted drafter and clock."""

from itertools import count

import pytest

from tandem.benchmarks.easyspec_latency import Replay, replay

pytestmark = pytest.mark.timeout(600)  # loads models; slow on a loaded machine


def test_replay_accepts_the_agreeing_prefix_and_the_targets_own_token():
    continuation = [10, 11, 12, 13, 14, 15]
    proposals = iter([[10, 11, 99], [13, 14, 15]])  # 2 accepted + 12; then 3 accepted
    seen = []

    def draft(history, k):
        seen.append(list(history))
        return next(proposals)

    ticks = count()
    result = Replay([])
    replay(draft, [1, 2], continuation, 3, lambda: next(ticks) * 0.5, result)
    assert seen == [[1, 2], [1, 2, 10, 11, 12]]
    assert (result.rounds, result.drafted, result.accepted) == (2, 6, 5)
    assert result.step_s == [0.5, 0.5]
    assert result.row(2) == "| 2 | 500.0 | 0.833 | 3.50 | 2 |"
