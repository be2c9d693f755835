"""The EAGLE-3 head runtime (plain torch) on a tiny random target and head: its cached,
incremental, cropped and batched paths all equal a recomputation from scratch, training's
unrolled steps equal what the runtime computes, and heads that do not fit are refused."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch.nn import functional as F

from tandem.speculation.eagle import EagleDrafter
from tandem.speculation.eagle_format import HeadConfig, HeadError
from tandem.speculation.eagle_head import Eagle3Head, load_head, save_head
from tandem.speculation.settings import SpeculationConfig
from tandem.speculation.source import DrafterSetup
from tandem.speculation.ttt import unroll
from tandem.training.train import locate

VOCAB = 96
HIDDEN = 64


def tiny_target(folder, hidden=HIDDEN, vocab=VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def tiny_head(target, folder, draft_vocab=48, seed=1):
    torch.manual_seed(seed)
    config = json.loads((target / "config.json").read_text())
    cfg = HeadConfig.for_target(config, draft_vocab)
    head = Eagle3Head(cfg, torch.randn(VOCAB, HIDDEN))
    vocab = torch.tensor(sorted(random.Random(seed).sample(range(VOCAB), draft_vocab)))
    with torch.no_grad():
        for p in head.parameters():  # away from the near-zero init: outputs that differ
            p.normal_(0, 0.3)
        head.d2t.copy_(vocab - torch.arange(draft_vocab))
        head.t2d.zero_()
        head.t2d[vocab] = True
    return save_head(head, folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("eagle")
    target = tiny_target(root / "target")
    head = tiny_head(target, root / "head")
    return target, head


@pytest.fixture
def drafter(parts):
    target, head = parts
    return EagleDrafter(head, target)


def features(n, seed=2):
    return torch.randn(n, 3 * HIDDEN, generator=torch.Generator().manual_seed(seed))


def sequence(n, seed=3):
    rng = random.Random(seed)
    return [rng.randrange(VOCAB) for _ in range(n)]


def reference_draft(head, tokens, feats, k, base=0):
    """Drafting recomputed from scratch at every token, no cache: grid position p pairs token
    x_{p+1} with fc(f_p) where the feature is known, else with the output at p - 1. `feats`
    start at position `base`; the grid starts there too."""
    tokens = list(tokens)
    draft = []
    with torch.no_grad():
        while len(draft) < k:
            seq = tokens + draft
            outs = []
            for p in range(base, len(seq) - 1):  # recompute the whole grid up to p each time
                hidden = [
                    head.fuse(feats[j - base]) if j - base < len(feats) else outs[j - base - 1]
                    for j in range(base, p + 1)
                ]
                q, kk, v, residual = head.project(
                    torch.tensor(seq[base + 1 : p + 2]),
                    torch.stack(hidden),
                    torch.arange(base, p + 1),
                )
                attended = F.scaled_dot_product_attention(q, kk, v, is_causal=True, enable_gqa=True)
                outs.append(head.finish(attended, residual)[-1])
            draft.append(int(head.to_target(head.logits(outs[-1]).argmax(-1))))
    return draft


@pytest.mark.timeout(120)
def test_draft_equals_recomputation(drafter):
    tokens, feats = sequence(10), features(9)
    state = drafter.new_state()
    assert drafter.draft(state, tokens, feats, 4) == reference_draft(drafter.head, tokens, feats, 4)


@pytest.mark.timeout(120)
def test_lagging_features_read_the_heads_own_outputs(drafter):
    tokens, feats = sequence(10), features(7)  # the last two positions have no feature yet
    state = drafter.new_state()
    assert drafter.draft(state, tokens, feats, 3) == reference_draft(drafter.head, tokens, feats, 3)


@pytest.mark.timeout(120)
def test_a_late_start_attends_from_its_first_feature(drafter):
    tokens, feats = sequence(16), features(9)  # features for positions 6..14
    state = drafter.new_state()
    draft = drafter.draft(state, tokens, feats, 4, features_start=6)
    assert draft == reference_draft(drafter.head, tokens, feats, 4, base=6)
    with pytest.raises(ValueError, match="continue at position 15"):
        drafter.draft(state, tokens, feats[:1], 4, features_start=17)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("base", [0, 5])
def test_incremental_rounds_equal_a_fresh_state(drafter, base):
    """Round after round (some drafts accepted, the rest cropped), the kept cache gives the
    same drafts as a state built from the whole history at once."""
    rng = random.Random(4)
    tokens, feats = sequence(80, seed=5), features(80, seed=6)
    state = drafter.new_state()
    committed, fed = 8, base
    while committed < 60:
        new = feats[fed : committed - 1]
        draft = drafter.draft(state, tokens[:committed], new, 4, features_start=fed)
        fed = committed - 1
        fresh = drafter.draft(
            drafter.new_state(), tokens[:committed], feats[base:fed], 4, features_start=base
        )
        assert draft == fresh
        assert len(draft) == 4 and all(0 <= t < VOCAB for t in draft)
        committed += rng.randrange(5) + 1
    assert state.settled == fed and state.k.shape[1] >= state.used


@pytest.mark.timeout(120)
def test_draft_ids_are_in_the_draft_vocabulary(drafter):
    draft = drafter.draft(drafter.new_state(), sequence(20), features(19), 8)
    assert all(bool(drafter.head.t2d[t]) for t in draft)


@pytest.mark.timeout(120)
def test_batched_outcomes_equal_drafting_each_one(drafter):
    """Pre-drafting the outcomes of a block under verification (all accepted with one more
    token guessed; rejected at j with the target's token there), batched, gives what drafting
    each outcome alone gives, and leaves the request's state as it was."""
    tokens, feats = sequence(30, seed=7), features(29, seed=8)
    state = drafter.new_state()
    block = drafter.draft(state, tokens, feats, 4)
    extras = [block, [5], [block[0], 7], block[:2] + [11], block[:3] + [1], [9], [], [3, 4, 5]]
    found = drafter.draft_many(state, tokens, None, extras, 4)
    for extra, draft in zip(extras, found, strict=True):
        assert draft == drafter.draft(drafter.new_state(), [*tokens, *extra], feats, 4), extra
    assert drafter.draft(state, tokens, None, 4) == block


@pytest.mark.timeout(120)
def test_training_unroll_equals_the_runtime(drafter):
    """Step i of training-time test at grid t is the runtime drafting its (i+1)-th token after
    committed x_0..x_{t+1}, having fed x_{t+2}..x_{t+1+i}; computing only some positions'
    outputs (the ones a loss counts) changes none of them."""
    head = drafter.head
    tokens, feats = torch.tensor([sequence(24, seed=9)]), features(24, seed=10)[None]
    generator = torch.Generator().manual_seed(11)
    masks = [torch.rand(1, 24, generator=generator) < 0.8]
    for _ in range(3):  # each step's positions are among the previous step's (as chains are)
        masks.append(masks[-1] & (torch.rand(1, 24, generator=generator) < 0.8))
    with torch.no_grad():
        outs = list(unroll(head, tokens, feats, 4))
        rows = list(unroll(head, tokens, feats, masks))
    for out, mask, row in zip(outs, masks, rows, strict=True):
        assert torch.allclose(out[mask], row, atol=1e-5)
    for t in (0, 5, 12, 17):
        for i, out in enumerate(outs):
            state = drafter.new_state()
            drafter._sync(state, tokens[0, : t + 2].tolist(), feats[0, : t + 1])
            runtime = drafter._extend(state, tokens[0, t + 2 : t + 2 + i].tolist())
            assert torch.allclose(out[0, t], runtime, atol=1e-4), (t, i)


@pytest.mark.timeout(120)
def test_format_has_the_standard_names(parts):
    from safetensors import safe_open

    target, head = parts
    with safe_open(str(head / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    attn = {f"midlayer.self_attn.{p}_proj.weight" for p in "qkvo"}
    mlp = {f"midlayer.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    norms = {
        f"midlayer.{n}.weight"
        for n in ("hidden_norm", "input_layernorm", "post_attention_layernorm")
    }
    assert (
        names == {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"} | attn | mlp | norms
    )
    config = json.loads((head / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["draft_vocab_size"] == 48 and config["eagle_aux_hidden_state_layer_ids"] == [
        2,
        3,
        3,
    ]


@pytest.mark.timeout(120)
def test_a_head_for_another_target_is_refused(parts, tmp_path):
    target, head = parts
    wider = tiny_target(tmp_path / "wider", hidden=2 * HIDDEN)
    with pytest.raises(HeadError, match="hidden size is 128"):
        load_head(head, wider)
    other_vocab = tiny_target(tmp_path / "vocab", vocab=2 * VOCAB)
    with pytest.raises(HeadError, match=r"vocabulary of 96 tokens, but the target's has 192"):
        load_head(head, other_vocab)


def test_steps_walk_through_epochs_of_different_lengths():
    """Each epoch packs its own shuffle into batches, so epochs differ in length: a global step
    maps to the epoch it falls in, never past an epoch's last batch."""
    lengths = {0: 5, 1: 3, 2: 4}
    assert [locate(s, lengths.__getitem__) for s in (0, 4, 5, 7, 8, 11)] == [
        (0, 0),
        (0, 4),
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 3),
    ]


@pytest.mark.parametrize(("name", "dtype"), [(None, torch.float16), ("float32", torch.float32)])
def test_the_drafters_head_runs_in_the_configured_dtype(parts, name, dtype):
    """float16 by default (speculation.drafters.eagle_dtype): the head reads half the bytes."""
    target, head = parts
    drafters = {} if name is None else {"eagle_dtype": name}
    config = SpeculationConfig(drafters=drafters)
    setup = DrafterSetup(config, vocab_size=VOCAB, eagle_head=head, target=target)
    drafter = EagleDrafter.build(setup, {})
    assert drafter.dtype == dtype and drafter.head.lm_head.weight.dtype == dtype
    state = drafter.new_state()
    tokens = sequence(12)
    assert len(drafter.draft(state, tokens, features(11), 3)) == 3
