"""Online learning of the EAGLE-3 head (tandem.speculation.online_learner) on a tiny random
target and head: the replay buffer stays in its bound under a long stream; an update that
drafts worse on held-back traffic (a corrupted one) is rolled back and one that does not is
kept; a swap leaves running requests on the version that computed their cache; a restart
serves the checkpoint; `tandem draft export` writes a head that loads in the standard format."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tandem.cli import main
from tandem.speculation.drafter import Drafter
from tandem.speculation.eagle import EagleDrafter
from tandem.speculation.eagle_format import ARCHITECTURE
from tandem.speculation.eagle_head import load_head
from tandem.speculation.online_learner import OnlineLearner
from tandem.speculation.protocol import DraftItem, Mode
from tandem.speculation.replay_buffer import Recorder, ReplayBuffer
from tandem.speculation.settings import DrafterConfig, OnlineConfig, SpeculationConfig
from tandem.speculation.source import DrafterSetup, History
from tests.unit.test_eagle import HIDDEN, VOCAB, tiny_head, tiny_target

pytestmark = pytest.mark.timeout(120)
K = 3


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    target = tiny_target(root / "target")
    return target, tiny_head(target, root / "head"), tiny_head(target, root / "other", seed=5)


def features(n, seed):
    return torch.randn(n, 3 * HIDDEN, generator=torch.Generator().manual_seed(seed))


def written_by(eagle, n, seed):
    """A request whose answer is the serving head's own first draft at every position, so that
    head's first drafted token is always accepted: (tokens, features, prompt_len)."""
    rng = random.Random(seed)
    feats = features(n, seed)
    tokens = [rng.randrange(VOCAB) for _ in range(4)]
    state = eagle.new_state()
    fed = 0
    while len(tokens) < n + 1:
        tokens += eagle.draft(state, tokens, feats[fed : len(tokens) - 1], 1)
        fed = len(tokens) - 2
    return tokens, feats, 4


def serve(drafter, request_id, tokens, feats, prompt_len, step=5):
    """The request through the drafter as the proposer sends it: the prompt and first token,
    then a few committed tokens a step, each with the features of the positions before them."""
    sent = prompt_len + 1
    drafter.draft([item(request_id, 0, tokens[:sent], feats[: sent - 1].numpy(), 0)])
    while sent < len(tokens):
        end = min(sent + step, len(tokens))
        rows = feats[sent - 1 : end - 1].numpy().astype(np.float16)
        drafter.draft([item(request_id, sent, tokens[sent:end], rows, sent - 1)])
        sent = end
    drafter.free([request_id])


def item(request_id, start, tokens, rows, first):
    return DraftItem(
        request_id,
        start,
        tuple(tokens),
        K,
        Mode.EAGLE,
        features=np.asarray(rows, dtype=np.float16),
        features_start=first,
    )


def online_drafter(parts, tmp_path, **online):
    target, head, _ = parts
    settings = {"enabled": True, "update_tokens": 1, "heldout_every": 2, **online}
    config = SpeculationConfig(
        num_speculative_tokens=K,
        drafters=DrafterConfig(eagle_dtype="float32", online=OnlineConfig(**settings)),
    )
    setup = DrafterSetup(config, VOCAB, eagle_head=head, target=target)
    eagle = EagleDrafter.build(setup, {})
    learner = OnlineLearner(eagle, config.drafters.online, target, K)  # stepped by the test
    return Drafter({Mode.EAGLE: eagle}, learner=learner), eagle, learner


def fill(drafter, eagle, requests=4, n=32):
    for i in range(requests):
        serve(drafter, f"r{i}", *written_by(eagle, n, seed=10 + i))


def test_the_buffer_stays_in_its_bound_under_a_long_stream():
    buffer = ReplayBuffer(capacity=500, heldout_every=5, heldout_requests=3)
    rng = np.random.default_rng(0)
    for i in range(2000):
        n = int(rng.integers(4, 400))
        history = History(f"r{i}", tokens=list(rng.integers(0, VOCAB, n + 1)), prompt_len=3)
        recorder = Recorder(limit=500)
        for start in range(0, n, 7):  # features arrive a few rows a step
            history.features.append((start, rng.standard_normal((min(7, n - start), 8))))
            recorder.take(history)
            history.features.clear()
        assert recorder.count == min(n, 500)
        trace = recorder.trace(history)
        if trace is not None:
            buffer.add(trace)
        assert buffer.positions <= 500 and len(buffer.held_back()) <= 3
    assert buffer.positions == sum(len(t) for t in buffer.train) > 400
    batch = buffer.sample(32)
    assert batch["tokens"].shape == (1, 32) and batch["aux"].shape == (1, 32, 8)


def test_a_gap_in_the_features_gives_no_trace():
    history = History("r", tokens=list(range(30)), prompt_len=2)
    recorder = Recorder(limit=100)
    history.features.append((0, np.zeros((10, 4))))
    recorder.take(history)
    history.features[:] = [(15, np.zeros((10, 4)))]  # positions 10..14 never came
    recorder.take(history)
    assert recorder.trace(history) is None


def test_a_corrupted_update_is_rolled_back(parts, tmp_path):
    drafter, eagle, learner = online_drafter(parts, tmp_path, lr=10.0, steps_per_update=8)
    serving = eagle.head
    fill(drafter, eagle)
    assert learner.due()
    assert learner.update() is False
    stats = drafter.learning()
    assert stats.updates_rolled_back == 1 and stats.updates_kept == 0 and stats.head_version == 0
    assert stats.window_acceptance > stats.candidate_acceptance
    assert eagle.head is serving  # still serving what it served
    for name, weight in serving.state_dict().items():  # and training starts again from it
        assert torch.equal(learner.candidate.state_dict()[name], weight), name
    assert 0 < stats.slice_max_s <= stats.learn_s


def test_an_update_no_worse_is_kept_and_served_to_new_requests(parts, tmp_path):
    drafter, eagle, learner = online_drafter(parts, tmp_path, lr=1e-9, steps_per_update=2)
    serving = eagle.head
    fill(drafter, eagle)
    assert learner.update() is True
    stats = drafter.learning()
    assert stats.updates_kept == 1 and stats.head_version == 1 and stats.buffer_tokens > 0
    assert stats.candidate_acceptance == stats.window_acceptance > 0.3
    assert eagle.head is not serving and eagle.new_state().head is eagle.head


def test_a_swap_leaves_running_requests_on_their_version(parts, tmp_path):
    target, head, other = parts
    drafter, eagle, learner = online_drafter(parts, tmp_path)
    tokens, feats, prompt = written_by(eagle, 30, seed=3)
    first = [item("a", 0, tokens[:20], feats[:19].numpy(), 0)]
    drafter.draft(first)
    drafter.sources[Mode.EAGLE].swap(load_head(other, target))  # a version between steps
    later = [item("a", 20, tokens[20:25], feats[19:24].numpy(), 19)]
    new = [item("b", 0, tokens[:25], feats[:24].numpy(), 0)]
    old_only = Drafter({Mode.EAGLE: EagleDrafter(head, target)})
    new_only = Drafter({Mode.EAGLE: EagleDrafter(other, target)})
    old_only.draft(first)
    # The running request drafts as if no swap had happened; a new one on the new version.
    assert drafter.draft(later)[0].tokens == old_only.draft(later)[0].tokens
    assert drafter.draft(new)[0].tokens == new_only.draft(new)[0].tokens
    assert old_only.draft(later)[0].tokens != new_only.draft(new)[0].tokens


def test_a_restart_serves_the_checkpoint(parts, tmp_path):
    path = tmp_path / "learned"
    drafter, eagle, learner = online_drafter(
        parts, tmp_path, lr=1e-3, steps_per_update=4, checkpoint_path=str(path), guard_margin=1
    )
    fill(drafter, eagle)
    assert learner.update() is True  # the margin lets any version through
    drafter.close()  # drain: a checkpoint
    learned = eagle.head.state_dict()
    assert json.loads((path / "online.json").read_text())["version"] == 1
    _, restarted, again = online_drafter(parts, tmp_path, checkpoint_path=str(path))
    assert again.version == 1 and again.stats().updates_kept == 1
    for name, weight in restarted.head.state_dict().items():
        assert torch.equal(weight, learned[name]), name
    assert not torch.equal(learned["fc.weight"], load_head(parts[1], parts[0]).fc.weight)


def test_export_writes_the_standard_format(parts, tmp_path):
    target, head, _ = parts
    out = tmp_path / "exported"
    argv = ["draft", "export", "--head", str(head), "--out", str(out), "--target", str(target)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    exported, original = load_head(out, target), load_head(head, target)
    for name, weight in original.state_dict().items():
        assert torch.allclose(exported.state_dict()[name].float(), weight.float(), atol=1e-3)


def test_online_learning_needs_a_head():
    with pytest.raises(ValidationError, match="online.enabled needs eagle_head"):
        DrafterConfig(eagle_head=None, online={"enabled": True})
    with pytest.raises(ValidationError, match="lr"):
        OnlineConfig(lr=0)
