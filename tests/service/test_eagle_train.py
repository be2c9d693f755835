"""`tandem draft data` and `tandem draft train` end to end on the default model, tiny: the data
is the target's own answers with the serving tap's features and the target's top-k soft labels,
the loss goes down, training resumes where it stopped and can start from an existing head, and
the head it writes loads in tandem's runtime and in vLLM's own eagle3 (the bench's vllm-eagle3
system), whose greedy output then equals the target's alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tandem.benchmarks.records import GenerationParams
from tandem.benchmarks.systems import Builder, Setup
from tandem.benchmarks.workload import Prompt
from tandem.speculation.eagle import EagleDrafter
from tandem.speculation.eagle_format import HeadError
from tandem.training.data import load_conversations, load_features

pytestmark = pytest.mark.slow


def tandem(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("draft")
    data, head = root / "data", root / "head"
    tandem("draft", "data", "--out", str(data), "--prompts", "5", "--max-tokens", "48")
    train = ["draft", "train", "--data", str(data), "--out", str(head), "--threads", "1"]
    train += ["--draft-vocab", "1024", "--batch-tokens", "2048", "--lr", "2e-3"]
    train += ["--checkpoint-every", "1", "--eval-every", "8", "--eval-conversations", "2"]
    tandem(*train, "--epochs", "6")
    tandem(*train, "--epochs", "8", "--resume")
    again = ["draft", "train", "--data", str(data), "--out", str(root / "again"), "--threads", "1"]
    again += ["--init", str(head), "--draft-vocab", "1024", "--checkpoint-every", "1"]
    tandem(*again, "--epochs", "1")
    return data, head


@pytest.mark.timeout(900)
def test_data_is_the_targets_own_answers_with_features(trained, model_path):
    data, _ = trained
    conversations = load_conversations(data)
    # passage tasks over its answers, and second turns
    assert {c.id[:2] for c in conversations} == {"s1", "s2", "s3"}
    examples = {e.id: e for e in load_features(data)}
    assert set(examples) == {c.id for c in conversations}
    for c in conversations:
        example = examples[c.id]
        n = len(example.tokens)
        assert example.tokens.tolist() == c.prompt + c.response
        assert example.aux.shape == (n, 3 * 576)
        assert example.topk_ids.shape == example.topk_logp.shape == (n, 8)
        assert (example.topk_logp.diff(dim=-1) <= 0).all()  # most likely first
        assert (example.greedy == example.topk_ids[:, 0]).all()
        # the answers are the target's greedy choices (batched decoding and a prefill pass
        # agree but for rare ties)
        response = example.tokens[example.prompt_len :]
        agree = (example.greedy[example.prompt_len - 1 : -1] == response).float().mean()
        assert agree > 0.95
    assert any(e.heldout for e in examples.values()) and not all(
        e.heldout for e in examples.values()
    )


@pytest.mark.timeout(900)
def test_features_are_the_targets_residual_stream(trained, model_path):
    """The serving tap's rows are Hugging Face's hidden states at the head's layers."""
    import torch
    from transformers import AutoModelForCausalLM

    data, _ = trained
    example = load_features(data)[0]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model(example.tokens[None], output_hidden_states=True)
    expected = torch.cat([out.hidden_states[layer][0] for layer in (2, 15, 27)], -1)
    torch.testing.assert_close(example.aux.float(), expected, atol=0.05, rtol=0.02)
    greedy = out.logits[0].argmax(-1)
    assert (greedy == example.greedy).float().mean() > 0.98


@pytest.mark.timeout(900)
def test_training_lowers_the_loss_and_resumes(trained):
    _, head = trained
    curve = [json.loads(line) for line in (head / "curve.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in curve]
    assert steps == list(range(1, len(steps) + 1))  # the resumed run went on from its step
    per_epoch = steps[-1] // 8
    assert per_epoch >= 1 and len(steps) == 8 * per_epoch
    first, last = curve[0]["loss"], curve[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    assert "accept_len_k4" in curve[-1] and curve[-1]["accept_len_k4"] >= 1.0
    # a run that starts from this head starts where it ended, not from scratch
    again = json.loads((head.parent / "again" / "curve.jsonl").read_text().splitlines()[0])
    assert again["loss"] < 0.5 * first, (first, again["loss"])
    config = json.loads((head / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["draft_vocab_size"] == 1024 and config["eagle_aux_hidden_state_layer_ids"] == [
        2,
        15,
        27,
    ]


@pytest.mark.timeout(900)
def test_tandems_runtime_loads_and_drafts(trained, model_path):
    data, head = trained
    drafter = EagleDrafter(head, model_path)
    example = load_features(data)[0]
    n = example.prompt_len + 1
    draft = drafter.draft(drafter.new_state(), example.tokens[:n].tolist(), example.aux[: n - 1], 4)
    assert len(draft) == 4 and all(bool(drafter.head.t2d[t]) for t in draft)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"target_hidden_size": 960},
            "reads target hidden states of size 960, but the target's hidden size is 576",
        ),
        ({"vocab_size": 32000}, "vocabulary of 32000 tokens, but the target's has 49152"),
    ],
)
def test_a_head_that_does_not_fit_is_refused(trained, model_path, tmp_path, change, message):
    from tandem.benchmarks.shared_config import bench_config, eagle_head_path
    from tandem.cluster.config.deployment import TandemConfig

    _, head = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(head / "model.safetensors")
    config = json.loads((head / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(HeadError, match=message):
        EagleDrafter(bad, model_path)
    with pytest.raises(HeadError, match=message):  # the bench's vllm-eagle3 refuses it too
        eagle_head_path(
            bench_config(TandemConfig(), None, None, None, None, str(bad)), str(model_path)
        )


@pytest.mark.timeout(900)
def test_vllm_eagle3_loads_the_head_and_stays_lossless(trained, model_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    data, head = trained
    setup = Setup(
        model_path=str(model_path),
        engine_args={"dtype": "float32", "enforce_eager": True, "max_model_len": 1024},
        tandem_config={},
        modes=(),
        draft_model_path=None,
        eagle_head_path=str(head),
    )
    builder = Builder(setup)
    assert "vllm-eagle3" not in builder.absent()
    conversations = [c for c in load_conversations(data) if c.id.startswith("s1")][:2]
    prompts = [Prompt(c.id, c.category, "", tuple(c.prompt)) for c in conversations]
    params = GenerationParams(max_new_tokens=32, temperature=0.0)
    outputs = {}
    for name in ("vllm-eagle3", "vllm-target"):
        system = builder.build(name)
        records = [system.run(p, params) for p in prompts]
        outputs[name] = [r.token_ids for r in records]
        if name == "vllm-eagle3":
            assert sum(r.drafts for r in records) > 0  # vLLM drafted with the head
        system.close()
    assert outputs["vllm-eagle3"] == outputs["vllm-target"]


@pytest.mark.timeout(900)
def test_vocab_trim_keeps_the_heads_rows_of_the_most_chosen_tokens(trained, model_path, tmp_path):
    import torch

    from tandem.speculation.eagle_head import load_head
    from tandem.training.vocab_trim import trim

    data, head = trained
    examples = load_features(data)
    trimmed = load_head(trim(head, str(model_path), examples, 256, tmp_path / "t"), model_path)
    full = load_head(head, model_path)
    assert trimmed.cfg.draft_vocab_size == 256 and int(trimmed.t2d.sum()) == 256
    kept = trimmed.vocabulary()  # target ids, each a row of the full head
    rows = full.vocabulary().tolist()
    assert torch.equal(trimmed.lm_head.weight, full.lm_head.weight[[rows.index(t) for t in kept]])
    chosen = torch.bincount(torch.cat([e.greedy for e in examples]), minlength=len(full.t2d))
    in_full = chosen[rows]
    assert chosen[kept].min() >= in_full.sort(descending=True).values[255]  # the most chosen


@pytest.mark.timeout(900)
def test_a_start_head_of_another_vocabulary_is_refused(trained, tmp_path):
    from tandem.training.train import TrainOptions, train

    data, head = trained
    options = TrainOptions(str(data), str(tmp_path / "h"), init=str(head))  # draft_vocab 8192
    with pytest.raises(ValueError, match="drafts over 1024 tokens, not draft_vocab=8192"):
        train(options, progress=False)
