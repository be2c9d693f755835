"""Taps on the target's forward pass: they read what the target computes, never change it.

`LogitsTap` keeps the top-k token ids of the logits rows of the last step (one row per verified
position), for tandem.speculation.candidates. Installed on the model object inside the worker, so
vLLM's own sampling and rejection sampling see the very logits they always did.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


class LogitsTap:
    def __init__(self, k: int) -> None:
        self.k = k
        self._rows: torch.Tensor | None = None

    def install(self, model: Any) -> None:
        original = model.compute_logits
        if getattr(original, "_tandem_tap", None) is not None:  # one tap per model
            original = original._tandem_original

        @functools.wraps(original)
        def compute_logits(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            logits = original(hidden_states, *args, **kwargs)
            if logits is not None:
                self._rows = logits.topk(self.k, dim=-1).indices.to("cpu")
            return logits

        compute_logits._tandem_tap = self
        compute_logits._tandem_original = original
        model.compute_logits = compute_logits

    def take(self) -> list[list[int]] | None:
        """The last step's rows (once): the proposer reads them right after sampling."""
        rows, self._rows = self._rows, None
        return None if rows is None else rows.tolist()
