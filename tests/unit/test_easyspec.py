"""EasySpec drafting (speculation/easyspec.py): layer groups of one are the model drafter token
for token, and the calibration forward leaves the committed tokens' keys/values exactly what a
sequential forward writes, so the fuzzy approximation never accumulates."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from tandem.models import derive_draft
from tandem.speculation.easyspec import EasySpecDrafter, make_groups
from tandem.speculation.model_drafter import ModelDrafter

pytestmark = pytest.mark.timeout(600)  # loads models; slow on a loaded machine

PROMPTS = (
    "The quick brown fox jumps over the lazy dog. The quick",
    "Write a short poem about the sea, the wind and the rain.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
)


@pytest.fixture(scope="module")
def draft_path(model_path):
    return derive_draft(model_path, 4)


def rounds(drafters, tokenizer, prompt, k=4, n_rounds=6):
    """Drive drafters through the same rounds: the target accepts a varying prefix of the first
    drafter's draft and adds a token of its own (a rejection, or the bonus token)."""
    history = tokenizer.encode(prompt)
    states = [d.new_state() for d in drafters]
    for r in range(n_rounds):
        drafts = [d.draft(s, history, k) for d, s in zip(drafters, states, strict=True)]
        yield history, states, drafts
        accepted = r % (k + 1)
        first = drafts[0]
        own = (first[accepted] + 1) % drafters[0].vocab_size if accepted < k else first[0]
        history = history + first[:accepted] + [own]


def test_groups_split_the_layers():
    assert make_groups(1, 3) == [[0], [1], [2]]
    assert make_groups(3, 4) == [[0, 1, 2], [3]]
    assert make_groups([1, 2, 1], 4) == [[0], [1, 2], [3]]
    with pytest.raises(ValueError, match="sum to 4"):
        make_groups([2, 1], 4)
    with pytest.raises(ValueError, match="> 0"):
        make_groups(0, 4)


def test_groups_of_one_are_the_model_drafter_token_for_token(draft_path, tokenizer):
    drafters = [ModelDrafter(draft_path), EasySpecDrafter(draft_path, layer_groups=1)]
    for prompt in PROMPTS:
        for history, states, (plain, easy) in rounds(drafters, tokenizer, prompt):
            assert easy == plain, (prompt, len(history))
            assert states[1].exact == len(history)


def exact_cache(drafter, tokens):
    cache = DynamicCache(config=drafter.model.config)
    with torch.inference_mode():
        drafter.model(input_ids=torch.tensor([tokens]), past_key_values=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("size", [2, 3])
def test_calibration_rewrites_the_fuzzy_cache_exactly(draft_path, tokenizer, size):
    drafter = EasySpecDrafter(draft_path, layer_groups=size)
    plain = ModelDrafter(draft_path)
    fuzzy_tail_differed = False
    for prompt in PROMPTS:
        for history, (state, _), (draft, exact_draft) in rounds(
            [drafter, plain], tokenizer, prompt
        ):
            # the round's first token comes from the exact (calibration) forward
            assert draft[0] == exact_draft[0]
            assert state.exact == len(history) and state.tokens[: len(history)] == history
            reference = exact_cache(drafter, state.tokens)
            for ours, exact in zip(state.cache.layers, reference.layers, strict=True):
                for got, want in ((ours.keys, exact.keys), (ours.values, exact.values)):
                    n = state.exact
                    torch.testing.assert_close(got[:, :, :n], want[:, :, :n], atol=1e-4, rtol=1e-4)
                    tail = (got[:, :, n:] - want[:, :, n:]).abs().max()
                    fuzzy_tail_differed |= bool(tail > 1e-3)
    assert fuzzy_tail_differed  # the drafted positions really were approximate
