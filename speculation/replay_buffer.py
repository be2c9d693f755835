"""The traffic a drafter learns from: what the target sent it for each request it served.

Every step the drafter receives, for a request in a feature mode (eagle, auto), the committed
tokens and the target's auxiliary features at the positions it read: exactly an EAGLE-3
head's inputs (features f_p, token x_{p+1}) and labels (the target's next tokens x_{p+2}...,
its own choices where they are output). `Recorder` keeps them per request while it runs;
when the request finishes its `Trace` goes into the `ReplayBuffer`: a bounded store of recent
traces for training, and a held-back slice of recent traffic that training never sees, on
which the guard compares a new version of the head with the serving one.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tandem.speculation.source import History

# A finished request adds to training only with at least this many output positions.
MIN_OUTPUT = 8


@dataclass(frozen=True)
class Trace:
    """One served request: tokens x_0..x_n and the target's features for positions 0..n-1
    (row p: what it computed reading x_p); the output starts at `prompt_len`."""

    tokens: torch.Tensor  # [n + 1] int64
    aux: torch.Tensor  # [n, features] float16
    prompt_len: int

    def __len__(self) -> int:
        return len(self.aux)

    @property
    def outputs(self) -> int:
        """Positions whose next token the target chose."""
        return len(self) - self.prompt_len + 1

    def window(self, start: int, size: int) -> dict[str, torch.Tensor]:
        """Positions start..start+size-1 as a batch of one for the training-time test
        (tandem.speculation.ttt): the label after each position is the token that followed it,
        and only output tokens count as the target's choices, so prompt positions, which the
        target did not write, teach nothing."""
        end = min(start + size, len(self))
        tokens = self.tokens[start:end]
        following = self.tokens[start + 1 : end + 1]
        chosen = torch.arange(start + 1, end + 1) >= self.prompt_len
        greedy = torch.where(chosen, following, torch.full_like(following, -1))
        return {
            "tokens": tokens[None],
            "greedy": greedy[None],
            "aux": self.aux[start:end].float()[None],
            "topk_ids": following[None, :, None],
            "topk_logp": torch.zeros(1, end - start, 1),
            "lengths": torch.tensor([end - start]),
        }


@dataclass
class Recorder:
    """One running request's features as they arrive (`history.state["online"]`), contiguous
    from position 0; at most `limit` rows (a longer request gives its first `limit`)."""

    limit: int
    rows: list[np.ndarray] = field(default_factory=list)
    count: int = 0  # rows held: positions 0..count-1
    broken: bool = False  # a gap (a drafter that restarted): this request gives no trace

    def take(self, history: History) -> None:
        """The feature blocks of `history` not seen yet (called after each sync, before a
        source consumes them)."""
        for start, block in history.features:
            if self.broken or self.count >= self.limit:
                return
            if start > self.count:
                self.broken = True
                return
            fresh = block[self.count - start : self.limit - start]
            if len(fresh):
                self.rows.append(fresh)
                self.count += len(fresh)

    def trace(self, history: History) -> Trace | None:
        """The finished request's trace; None without enough output to learn from."""
        n = min(self.count, len(history.tokens) - 1)
        if self.broken or history.prompt_len < 1 or n - history.prompt_len + 1 < MIN_OUTPUT:
            return None
        aux = torch.from_numpy(np.concatenate(self.rows)[:n].astype(np.float16, copy=False))
        tokens = torch.tensor(history.tokens[: n + 1], dtype=torch.long)
        return Trace(tokens, aux, history.prompt_len)


class ReplayBuffer:
    """Recent traces, bounded by positions held (the oldest go first), and a held-back slice:
    every `heldout_every`-th trace, the last `heldout_requests` of them. Thread-safe: the
    drafter adds, the learner samples."""

    def __init__(
        self, capacity: int, heldout_every: int, heldout_requests: int, seed: int = 0
    ) -> None:
        self.capacity = capacity
        self.heldout_every = heldout_every
        self.train: deque[Trace] = deque()
        self.heldout: deque[Trace] = deque(maxlen=heldout_requests)
        self.positions = 0  # held in `train`
        self.added = 0  # traces ever added
        self.arrived = 0  # positions ever added, held back or not
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, trace: Trace) -> None:
        with self._lock:
            self.added += 1
            self.arrived += len(trace)
            if self.added % self.heldout_every == 0:
                self.heldout.append(trace)
                return
            self.train.append(trace)
            self.positions += len(trace)
            while self.positions > self.capacity:  # a trace is never longer (Recorder.limit)
                self.positions -= len(self.train.popleft())

    def sample(self, size: int) -> dict[str, torch.Tensor] | None:
        """A window of up to `size` positions over a trace's output (which starts it, or
        anywhere after), the trace drawn by its output's length; None while the buffer is
        empty."""
        with self._lock:
            if not self.train:
                return None
            weights = [t.outputs for t in self.train]
            trace = self._rng.choices(self.train, weights=weights)[0]
        first = max(0, min(trace.prompt_len - 1, len(trace) - size))
        start = self._rng.randrange(first, max(first + 1, len(trace) - size + 1))
        return trace.window(start, size)

    def held_back(self) -> Sequence[Trace]:
        with self._lock:
            return list(self.heldout)
