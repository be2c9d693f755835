"""Taps on the target's forward pass: they read what the target computes, never change it.

`LogitsTap` keeps the top-k token ids of the logits rows of the last step (one row per verified
position), for tandem.speculation.candidates. Installed on the model object inside the worker, so
vLLM's own sampling and rejection sampling see the very logits they always did.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from tandem.speculation.protocol import Hint


class LogitsTap:
    def __init__(self, k: int) -> None:
        self.k = k
        # Off while no request drafts (the proposer says): no top-k, no copy to the host.
        self.enabled = True
        self._rows: torch.Tensor | None = None

    def install(self, model: Any) -> None:
        original = model.compute_logits
        if getattr(original, "_tandem_tap", None) is not None:  # one tap per model
            original = original._tandem_original

        @functools.wraps(original)
        def compute_logits(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            logits = original(hidden_states, *args, **kwargs)
            if logits is not None and self.enabled:
                self._rows = logits.topk(self.k, dim=-1).indices.to("cpu")
            return logits

        compute_logits._tandem_tap = self
        compute_logits._tandem_original = original
        model.compute_logits = compute_logits

    def take(self) -> list[list[int]] | None:
        """The last step's rows (once): the proposer reads them right after sampling."""
        rows, self._rows = self._rows, None
        return None if rows is None else rows.tolist()


class MirrorSink:
    """Where Mirror-SD's early exit (tandem.plugins.mirror) sends its top-κ: it reads which rows
    are under verification from the runner's batch and forwards each speculating request's rows
    to the session, which passes them on to the drafters without waiting."""

    def __init__(self, runner: Any, session: Any) -> None:
        self.runner = runner
        self.session = session
        self._owners: list[tuple[str, tuple[int, ...]]] = []  # (request id, draft), row order

    def rows(self) -> list[int]:
        from tandem.plugins.proposer import external_id
        from tandem.speculation.candidates import verification_rows

        batch = self.runner.input_batch
        count = batch.num_reqs
        drafts = batch.spec_token_ids[:count]
        ends = self.runner.query_start_loc.np[1 : count + 1]
        self._owners = [
            (external_id(batch.req_ids[i]), tuple(d)) for i, d in enumerate(drafts) if d
        ]
        return verification_rows(ends, drafts)

    def send(self, top: list[list[int]]) -> None:
        hints, row = {}, 0
        for request_id, draft in self._owners:
            count = len(draft) + 1
            hints[request_id] = Hint(draft, tuple(tuple(r) for r in top[row : row + count]))
            row += count
        self.session.hint(hints)
