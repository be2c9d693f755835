"""`tandem draft train`: an EAGLE-3 head distilled from its target, with training-time test.

Self-distillation: the labels are the target's own next-token distributions (its top-k tokens
per position, renormalised over those in the draft vocabulary), the inputs its own auxiliary
features, both read once by `tandem.training.data`.

Training-time test (EAGLE-3): the head is unrolled for `ttt_steps` steps per position, each
reading the previous step's output as drafting does (tandem.speculation.ttt).

The draft vocabulary is the `draft_vocab` tokens the target chooses most often in the
training data (VocabTrim); `d2t`/`t2d` map it. The LM head starts as the target's rows for those
tokens and the final norm as the target's; or, with `init`, the whole head (and its vocabulary)
starts as an existing head's, so a head keeps improving on new data.

Every `checkpoint_every` steps the run writes `checkpoint.pt` (resume with --resume), the head
in the standard format, and (every `eval_every`) the acceptance on the held-out conversations
to `curve.jsonl`: mean accepted tokens per target forward when the runtime drafts k tokens.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tandem.speculation.eagle import EagleDrafter
from tandem.speculation.eagle_acceptance import acceptance
from tandem.speculation.eagle_format import HeadConfig, read_config
from tandem.speculation.eagle_head import Eagle3Head, load_head, save_head, target_weight
from tandem.speculation.ttt import ttt_loss
from tandem.training import TrainingError
from tandem.training.data import Example, greedy_counts, load_features, read_recipe

CHECKPOINT = "checkpoint.pt"
CURVE = "curve.jsonl"


@dataclass(frozen=True)
class TrainOptions:
    data: str  # a folder made by `tandem draft data`
    out: str  # the head folder (standard format), with checkpoint.pt and curve.jsonl
    draft_vocab: int = 8192
    epochs: float = 3.0
    lr: float = 1e-3
    warmup: int = 20
    batch_tokens: int = 2048  # padded tokens per step
    max_len: int = 1024
    ttt_steps: int = 4
    seed: int = 0
    checkpoint_every: int = 25
    eval_every: int = 75
    eval_k: int = 4
    eval_conversations: int = 24
    device: str = "cpu"
    init: str = ""  # a head (standard format) to start from instead of the target's rows
    # The matmuls' dtype: "bfloat16" runs them under autocast (weights and optimizer stay fp32);
    # 2.8x faster on a CPU with AVX-512 BF16, slower on one without.
    dtype: str = "float32"


def train(opts: TrainOptions, resume: bool = False, progress: bool = True) -> Path:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data_recipe = read_recipe(opts.data)
    target = data_recipe["target"]
    examples = load_features(opts.data)
    if not examples:
        raise TrainingError(f"{opts.data}: no features; run `tandem draft data` first")
    train_set = [e for e in examples if not e.heldout]
    heldout = [e for e in examples if e.heldout][: opts.eval_conversations]
    device = torch.device(opts.device)
    torch.manual_seed(opts.seed)

    target_config = read_config(target)
    if not 0 < opts.draft_vocab <= target_config["vocab_size"]:
        raise TrainingError(
            f"draft_vocab must be between 1 and the target's {target_config['vocab_size']} tokens"
        )
    checkpoint = _load_checkpoint(out, opts) if resume else None
    if opts.init and not checkpoint:  # a resumed run's head comes from its checkpoint
        head = load_head(opts.init, target).requires_grad_(True)
        vocab = head.vocabulary()
        if len(vocab) != opts.draft_vocab:
            raise TrainingError(
                f"the head to start from ({opts.init}) drafts over {len(vocab)} tokens, not "
                f"draft_vocab={opts.draft_vocab}: pass --draft-vocab {len(vocab)}, or trim it "
                "first (tandem draft trim)"
            )
    else:
        vocab = checkpoint["vocab"] if checkpoint else draft_vocabulary(train_set, opts.draft_vocab)
        head = _new_head(target, target_config, vocab, data_recipe["aux_layers"])
    head = head.to(device)
    draft_index = torch.full((target_config["vocab_size"],), -1, dtype=torch.long)
    draft_index[vocab] = torch.arange(len(vocab))  # target id -> draft id, -1 outside
    draft_index = draft_index.to(device)

    if opts.dtype not in ("float32", "bfloat16", "float16"):
        raise TrainingError(f"dtype must be float32, bfloat16 or float16, not {opts.dtype!r}")
    compute = getattr(torch, opts.dtype)
    optimizer = torch.optim.AdamW(
        [p for p in head.parameters() if p.requires_grad], lr=opts.lr, betas=(0.9, 0.95)
    )
    epochs: dict[int, list[list[Example]]] = {}

    def batches(epoch: int) -> list[list[Example]]:
        if epoch not in epochs:
            epochs.clear()
            epochs[epoch] = _batches(train_set, opts, epoch)
        return epochs[epoch]

    lengths: dict[int, int] = {}  # batches per epoch

    def epoch_length(epoch: int) -> int:
        if epoch not in lengths:
            lengths[epoch] = len(batches(epoch))
        return lengths[epoch]

    batches_per_epoch = len(batches(0))
    total = max(1, math.ceil(opts.epochs * batches_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(opts.warmup, total))
    step, wall, seen = 0, 0.0, 0  # seen: tokens trained on (not padding)
    if checkpoint:
        head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        step, wall, seen = checkpoint["step"], checkpoint["wall_s"], checkpoint.get("tokens", 0)

    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not progress)
    started = time.perf_counter() - wall
    window: list[dict[str, float]] = []
    while step < total:
        epoch, index = locate(step, epoch_length)
        batch = batches(epoch)[index]
        seen += sum(min(len(e.tokens), opts.max_len) for e in batch)
        head.train()
        with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
            stats = ttt_loss(
                head, draft_index, _collate(batch, opts.max_len, device), opts.ttt_steps
            )
        optimizer.zero_grad(set_to_none=True)
        stats["loss"].backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 0.5)
        optimizer.step()
        schedule.step()
        step += 1
        window.append({k: float(v.detach()) for k, v in stats.items()})
        bar.update()
        bar.set_postfix(
            loss=f"{stats['loss']:.3f}",
            acc0=f"{stats['acc0']:.2f}",
            epoch=f"{step / batches_per_epoch:.2f}",
        )
        last = step == total
        if step % opts.checkpoint_every == 0 or last:
            elapsed = time.perf_counter() - started
            _save(out, opts, head, optimizer, schedule, (step, elapsed, seen), vocab)
            record: dict[str, Any] = {
                "step": step,
                "epoch": round(step / batches_per_epoch, 3),
                "wall_s": round(elapsed, 1),
                "tokens": seen,
                **{k: round(sum(w[k] for w in window) / len(window), 4) for k in window[0]},
            }
            window = []
            if heldout and (step % opts.eval_every == 0 or last):
                drafter = EagleDrafter(out, target, device=opts.device)
                record.update(acceptance(drafter, heldout, opts.eval_k))
            with (out / CURVE).open("a") as f:
                f.write(json.dumps(record) + "\n")
            if f"accept_len_k{opts.eval_k}" in record:
                plot_curve(out, opts.eval_k)
            bar.write(json.dumps(record))
    bar.close()
    return out


# ---- data ---------------------------------------------------------------------------------------


def draft_vocabulary(examples: list[Example], size: int) -> torch.Tensor:
    """The draft vocabulary (sorted ids): the tokens the target chose in the training data,
    most often first, then the lowest ids not seen yet (a BPE tokenizer numbers its merges in
    order of frequency, so they stand in for what a small data set does not show)."""
    counts = greedy_counts(examples)
    chosen = sorted(counts.nonzero().flatten().tolist(), key=lambda t: (-int(counts[t]), t))
    chosen = chosen[:size]
    seen = set(chosen)
    filler = (t for t in range(10**9) if t not in seen)
    chosen += [next(filler) for _ in range(size - len(chosen))]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def locate(step: int, epoch_length: Callable[[int], int]) -> tuple[int, int]:
    """The (epoch, batch index) of a global step. Epochs differ in length (their batches are
    packed after each epoch's own shuffle), so the step is walked through them in order."""
    epoch = 0
    while step >= (length := epoch_length(epoch)):
        step -= length
        epoch += 1
    return epoch, step


def _batches(examples: list[Example], opts: TrainOptions, epoch: int) -> list[list[Example]]:
    """The epoch's batches: shuffled (seeded by epoch), grouped by similar length under a
    padded token budget."""
    order = list(range(len(examples)))
    random.Random(opts.seed * 1000 + epoch).shuffle(order)
    batches: list[list[Example]] = []
    group = 64  # sort within groups of this many, so batches pad little but still mix
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: len(examples[i].tokens))
        current: list[Example] = []
        for i in chunk:
            example = examples[i]
            longest = max([min(len(e.tokens), opts.max_len) for e in [*current, example]])
            if current and longest * (len(current) + 1) > opts.batch_tokens:
                batches.append(current)
                current = []
            current.append(example)
        if current:
            batches.append(current)
    random.Random(opts.seed * 1000 + epoch + 1).shuffle(batches)
    return batches


def _collate(batch: list[Example], max_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    lengths = [min(len(e.tokens), max_len) for e in batch]
    length = max(lengths)

    def pad(name: str, dtype: torch.dtype) -> torch.Tensor:
        rows = [getattr(e, name)[:length] for e in batch]
        shape = (len(batch), length, *rows[0].shape[1:])
        out = torch.zeros(shape, dtype=dtype)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row.to(dtype)
        return out.to(device)

    return {
        "tokens": pad("tokens", torch.long),
        "greedy": pad("greedy", torch.long),
        "aux": pad("aux", torch.float32),
        "topk_ids": pad("topk_ids", torch.long),
        "topk_logp": pad("topk_logp", torch.float32),
        "lengths": torch.tensor(lengths, device=device),
    }


# ---- the head and its checkpoints ---------------------------------------------------------------


def _new_head(
    target: str, target_config: dict[str, Any], vocab: torch.Tensor, aux_layers: list[int]
) -> Eagle3Head:
    cfg = HeadConfig.for_target(target_config, len(vocab), aux_layers or None)
    head = Eagle3Head(cfg, target_weight(target, "embed_tokens.weight").float())
    with torch.no_grad():
        head.d2t.copy_(vocab - torch.arange(len(vocab)))
        head.t2d.zero_()
        head.t2d[vocab] = True
        teacher = target_weight(target, "lm_head.weight", "embed_tokens.weight")
        head.lm_head.weight.copy_(teacher[vocab].float())
        head.norm.weight.copy_(target_weight(target, "norm.weight").float())
    return head


def _save(
    out: Path,
    opts: TrainOptions,
    head: Eagle3Head,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    progress: tuple[int, float, int],
    vocab: torch.Tensor,
) -> None:
    step, wall_s, tokens = progress
    save_head(head, out)
    state = {
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "step": step,
        "wall_s": wall_s,
        "tokens": tokens,
        "vocab": vocab,
        "options": asdict(opts),
    }
    tmp = out / (CHECKPOINT + ".partial")
    torch.save(state, tmp)
    tmp.rename(out / CHECKPOINT)
    (out / "training.json").write_text(
        json.dumps(
            {"options": asdict(opts), "step": step, "wall_s": round(wall_s, 1), "tokens": tokens},
            indent=2,
        )
        + "\n"
    )


def plot_curve(out: Path, k: int) -> Path:
    """curve.png: held-out acceptance against the tokens trained on, from curve.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"accept_len_k{k}"
    records = [json.loads(line) for line in (out / CURVE).read_text().splitlines() if line]
    points = [(r["tokens"] / 1e6, r[key]) for r in records if key in r and "tokens" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points:
        ax.plot(*zip(*points, strict=True), marker="o")
    ax.set_xlabel("tokens trained on (millions)")
    ax.set_ylabel(f"tokens per target forward (k = {k})")
    ax.set_title(f"{out.name}: held-out acceptance")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=110)
    plt.close(fig)
    return out / "curve.png"


def _load_checkpoint(out: Path, opts: TrainOptions) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    checkpoint = torch.load(path, weights_only=False)
    theirs = checkpoint["options"]
    # What may change on resume: how long to train and how often to report.
    free = {"epochs", "checkpoint_every", "eval_every", "eval_conversations", "device"}
    free |= {"init", "dtype"}
    differ = sorted(k for k, v in asdict(opts).items() if k not in free and theirs.get(k) != v)
    if differ:
        raise TrainingError(f"{path} was trained with other options ({', '.join(differ)})")
    return checkpoint


def _cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
