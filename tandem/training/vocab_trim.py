"""VocabTrim: a head's draft vocabulary cut to the tokens its target chooses most often.

The head's LM head is the largest part of a small head's forward (576 x 8192 weights beside
one decoder layer's ~5M), and it runs once per drafted token; a draft token the target never
chooses costs time and earns nothing. Trimming keeps the LM head's rows of the `size` tokens
the target chose most often in the training data (its greedy choices), without retraining, as
the VocabTrim paper does; `tandem draft trim` measures acceptance and drafting time per size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tandem.speculation.eagle_format import HeadConfig
from tandem.speculation.eagle_head import Eagle3Head, load_head, save_head
from tandem.training import TrainingError
from tandem.training.data import Example, greedy_counts


def trim(head_dir: str | Path, target: str, examples: list[Example], size: int, out: Path) -> Path:
    """Write to `out` the head at `head_dir` with its draft vocabulary cut to `size` tokens."""
    head = load_head(head_dir, target)
    vocab = head.vocabulary()  # draft id -> target id
    if not 0 < size <= len(vocab):
        raise TrainingError(f"size must be between 1 and the head's {len(vocab)} draft tokens")
    counts = greedy_counts(examples, head.cfg.vocab_size)
    # most chosen first; ties to the lower id (a BPE tokenizer's more frequent merge)
    order = sorted(range(len(vocab)), key=lambda i: (-int(counts[vocab[i]]), int(vocab[i])))
    rows = torch.tensor(sorted(order[:size]))
    cfg = HeadConfig.from_dict(dict(head.cfg.raw, draft_vocab_size=size))
    trimmed = Eagle3Head(cfg, head.embed_tokens)
    state = head.state_dict()
    state["lm_head.weight"] = state["lm_head.weight"][rows]
    state["d2t"] = vocab[rows] - torch.arange(size)
    state["t2d"] = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    state["t2d"][vocab[rows]] = True
    trimmed.load_state_dict(state)
    return save_head(trimmed, out)
