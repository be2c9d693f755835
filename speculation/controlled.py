"""Controlled acceptance: a measurement tool for `tandem bench`, never a drafter to serve with.

It proposes the target's own greedy continuation of the prompt (known in advance), each token
replaced by a different random token with probability 1 - alpha, so that every draft position
is accepted with probability alpha whatever the text. Drafting takes a real compute cost per
token (matrix products on this process's threads, not a sleep), so the pipeline is measured
against a drafter that competes for the machine. Comparing the speedup achieved with the ideal
one for the same alpha, k and verification cost says how close tandem's pipelining comes to it,
independently of any drafter's quality.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def load_continuations(path: str | Path) -> dict[tuple[int, ...], list[int]]:
    """A JSON list of {"prompt": [ids], "continuation": [ids]}, keyed by the prompt."""
    rows = json.loads(Path(path).read_text())
    return {tuple(r["prompt"]): list(r["continuation"]) for r in rows}


def save_continuations(
    path: str | Path, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> None:
    rows = [{"prompt": list(p), "continuation": list(c)} for p, c in pairs]
    Path(path).write_text(json.dumps(rows))


class Burner:
    """Spends wall time on real arithmetic: products of a small matrix until the time is up."""

    def __init__(self, size: int = 64) -> None:
        self.matrix = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)

    def spend(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        x = self.matrix
        while time.perf_counter() < end:
            x = np.tanh(x @ self.matrix)


class ControlledDrafter:
    """Drafts the known continuation, each token corrupted with probability 1 - alpha."""

    def __init__(
        self,
        continuations: Mapping[tuple[int, ...], Sequence[int]],
        alpha: float,
        cost_ms: float,
        vocab_size: int,
        seed: int = 0,
    ) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.continuations = continuations
        self.alpha = alpha
        self.cost_s = cost_ms / 1000
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)
        self.burner = Burner()

    def propose(self, tokens: Sequence[int], prompt_len: int, k: int) -> list[int]:
        """The continuation after the request's committed tokens; empty for an unknown prompt
        or once the committed output has left the continuation."""
        truth = self.continuations.get(tuple(tokens[:prompt_len]))
        if truth is None or k <= 0:
            return []
        done = len(tokens) - prompt_len
        if list(tokens[prompt_len:]) != list(truth[:done]):
            return []
        draft = [self._corrupt(t) for t in truth[done : done + k]]
        self.burner.spend(self.cost_s * len(draft))
        return draft

    def _corrupt(self, token: int) -> int:
        if self.rng.random() < self.alpha:
            return int(token)
        other = int(self.rng.integers(self.vocab_size - 1))
        return other + (other >= token)  # uniform over every token but the true one
