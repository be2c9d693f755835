"""How well an EAGLE-3 head drafts along text the target wrote: the runtime's own drafts,
verified greedily against the committed tokens, as the target would verify them.

Two readers: training's held-out curve (`tandem draft train`, `draft eval`, `draft trim`) and
online learning's guard (tandem.speculation.online_learner), which compares a new version of
the head with the serving one on the same held-back traffic. One definition for both, so the
guard's figure is the curve's figure.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from tandem.speculation.eagle import EagleDrafter
from tandem.speculation.eagle_head import Eagle3Head


class Text(Protocol):
    """A conversation the target wrote: its tokens, where its answer starts, and the target's
    features at each position (row p: what it computed reading token p)."""

    tokens: torch.Tensor
    prompt_len: int
    aux: torch.Tensor


def acceptance(
    drafter: EagleDrafter,
    texts: Sequence[Text],
    k: int,
    head: Eagle3Head | None = None,
    each_draft: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, float]:
    """Greedy verification of the runtime's k-token drafts along each text's answer: mean
    tokens per target forward (1 + accepted per round), accepted per drafted token, the
    per-position acceptance, and the mean time of one draft (ms). `head`: another version of
    the drafter's head (default its own). `each_draft`: a context entered around every draft,
    so a caller that shares a core can hold it one draft at a time."""
    rounds = accepted = drafted = 0
    drafting = 0.0
    at_position = [0] * k
    for text in texts:
        tokens = text.tokens.tolist()
        state = drafter.new_state(head)
        committed = text.prompt_len + 1  # the prompt, and the first token prefill emitted
        fed = 0
        while committed < len(tokens):
            with each_draft():
                started = time.perf_counter()
                draft = drafter.draft(state, tokens[:committed], text.aux[fed : committed - 1], k)
                drafting += time.perf_counter() - started
            fed = committed - 1
            right = 0
            for d, t in zip(draft, tokens[committed : committed + k], strict=False):
                if d != t:
                    break
                at_position[right] += 1
                right += 1
            rounds += 1
            drafted += len(draft)
            accepted += right
            committed += right + 1
    if not rounds:
        return {}
    out = {f"accept_len_k{k}": round(1 + accepted / rounds, 4)}
    out["accepted_per_drafted"] = round(accepted / max(1, drafted), 4)
    out.update({f"accept_p{i + 1}": round(n / rounds, 4) for i, n in enumerate(at_position)})
    out["draft_ms"] = round(1000 * drafting / rounds, 3)
    return out
