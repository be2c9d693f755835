"""Controlled acceptance (a measurement tool): per-position acceptance alpha, a real cost."""

import time

import pytest

from tandem.benchmarks.controlled_source import (
    ControlledSource,
    load_continuations,
    save_continuations,
)
from tandem.speculation.source import History

pytestmark = pytest.mark.timeout(120)

PROMPT = (5, 6, 7)
TRUTH = list(range(100, 140))


def drafter(alpha, cost_ms=0.0, seed=0):
    source = ControlledSource({PROMPT: TRUTH}, alpha, cost_ms, vocab_size=1000, seed=seed)
    return Proposer(source)


class Proposer:
    """propose(tokens, prompt_len, k) over the source's history-shaped call."""

    def __init__(self, source):
        self.source = source

    def propose(self, tokens, prompt_len, k):
        return self.source.propose(History("r", list(tokens), prompt_len), (), k)


@pytest.mark.parametrize("alpha", [0.5, 0.7, 0.9])
def test_acceptance_rate_is_alpha_and_corrupted_tokens_differ(alpha):
    d = drafter(alpha)
    kept = total = 0
    for _ in range(2000):
        draft = d.propose(list(PROMPT) + TRUTH[:10], len(PROMPT), 4)
        assert len(draft) == 4
        for got, true in zip(draft, TRUTH[10:14], strict=True):
            kept += got == true
            total += 1
    assert abs(kept / total - alpha) < 0.02


def test_same_seed_same_drafts():
    tokens = list(PROMPT) + TRUTH[:3]
    assert drafter(0.5, seed=3).propose(tokens, 3, 4) == drafter(0.5, seed=3).propose(tokens, 3, 4)


def test_unknown_prompt_or_diverged_output_gives_no_draft():
    d = drafter(1.0)
    assert d.propose([1, 2, 3, 100], 3, 4) == []
    assert d.propose(list(PROMPT) + [100, 999], 3, 4) == []
    assert d.propose(list(PROMPT) + TRUTH[:38], 3, 4) == TRUTH[38:]  # cut at its end


def test_drafting_costs_real_time():
    d = drafter(1.0, cost_ms=20)
    start = time.perf_counter()
    d.propose(list(PROMPT), 3, 4)
    assert time.perf_counter() - start >= 0.08


def test_continuations_file_round_trip(tmp_path):
    path = tmp_path / "c.json"
    save_continuations(path, [(PROMPT, TRUTH)])
    assert load_continuations(path) == {PROMPT: TRUTH}
