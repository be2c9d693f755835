"""The model drafter's KV cache: drafts equal greedy decoding of the draft model, and rolling
back rejected drafts leaves no trace."""

import pytest
import torch

from tandem.models import check_same_vocabulary, derive_draft
from tandem.speculation.model_drafter import ModelDrafter

pytestmark = pytest.mark.timeout(600)  # loads models; slow on a loaded machine


@pytest.fixture(scope="module")
def draft_path(model_path):
    return derive_draft(model_path, 2)


@pytest.fixture(scope="module")
def drafter(draft_path):
    return ModelDrafter(draft_path)


def greedy(drafter, history, k):
    ids = torch.tensor([history])
    with torch.inference_mode():
        out = drafter.model.generate(ids, max_new_tokens=k, do_sample=False, min_new_tokens=k)
    return out[0, len(history) :].tolist()


def test_derived_draft_shares_the_vocabulary(model_path, draft_path, tmp_path):
    assert derive_draft(model_path, 2) == draft_path  # idempotent
    check_same_vocabulary(model_path, draft_path)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(draft_path).num_hidden_layers == 2


def test_drafts_equal_greedy_decoding_through_accept_and_reject(drafter, tokenizer):
    history = tokenizer.encode("The quick brown fox jumps over the lazy dog. The quick")
    state = drafter.new_state()
    first = drafter.draft(state, history, 4)
    assert first == greedy(drafter, history, 4)
    # the target accepts two drafts and adds a token of its own (a rejection at position 3)
    history = history + first[:2] + [(first[2] + 1) % drafter.vocab_size]
    second = drafter.draft(state, history, 3)
    assert second == greedy(drafter, history, 3)
    assert state.tokens == history + second[:-1]
    # everything accepted, plus a bonus token
    history = history + second + [tokenizer.encode(" end")[0]]
    assert drafter.draft(state, history, 2) == greedy(drafter, history, 2)


def test_other_vocabulary_is_refused(model_path, tmp_path):
    from transformers import AutoTokenizer

    from tandem.models import ModelError

    other = tmp_path / "other"
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.add_tokens(["<tandem-new-token>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ModelError, match="does not share the target's vocabulary"):
        check_same_vocabulary(model_path, other)


def test_stop_below_ends_the_block_before_a_doubtful_token(drafter, draft_path):
    history = [1, 2, 3, 4]
    full = drafter.draft(drafter.new_state(), history, 4)
    doubtful = ModelDrafter(draft_path, stop_below=0.999999)
    short = doubtful.draft(doubtful.new_state(), history, 4)
    assert len(full) == 4 and len(short) < 4
    assert short == full[: len(short)]  # the same tokens, cut short
