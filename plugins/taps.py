"""Taps on the target's forward pass: they read what the target computes, never change it.

`LogitsTap` keeps the top-k token ids of the logits rows of the last step (one row per verified
position), for tandem.speculation.candidates. Installed on the model object inside the worker, so
vLLM's own sampling and rejection sampling see the very logits they always did.

`FeatureTap` keeps EAGLE-3's features of the last step: the residual stream entering the head's
auxiliary layers at every position the target computed. It reads them from the model's own
outputs where the target implements vLLM's EAGLE-3 interface (tandem.plugins.aux_outputs, as
vLLM's eagle3 does, compilation on), and otherwise with forward hooks (eager execution only).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

from tandem.speculation.protocol import Hint

if TYPE_CHECKING:
    from tandem.plugins.aux_outputs import AuxOutputs


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


class FeatureTap:
    """The residual stream entering each of `layers` (what vLLM's own eagle3 reads as auxiliary
    hidden states: layer L's input, i.e. Hugging Face's hidden_states[L]) at every position of
    the last forward pass, concatenated in `layers` order. Rows leave the device only for the
    requests the proposer asks for (those in a feature mode), as float16.
    """

    def __init__(self, runner: Any, layers: tuple[int, ...]) -> None:
        self.runner = runner
        self.layers = tuple(layers)
        self._states: dict[int, torch.Tensor] = {}
        self._positions: torch.Tensor | None = None
        self._rows: dict[str, tuple[int, int]] = {}  # engine request id -> its rows

    def install(self, model: Any, outputs: AuxOutputs | None = None) -> None:
        """Read the model's `outputs` when given; else hook the decoder's layers, which only
        eager execution runs (compiled or graph-captured code skips Python hooks)."""
        if outputs is not None:
            outputs.sink = self.capture
            return
        decoder = model.model
        decoder.layers[0].register_forward_pre_hook(self._begin, with_kwargs=True)
        for layer in set(self.layers) - {0}:
            decoder.layers[layer - 1].register_forward_hook(functools.partial(self._after, layer))

    def capture(self, positions: torch.Tensor, states: dict[int, torch.Tensor]) -> None:
        """One forward pass's features, from the model's outputs."""
        self._start(positions)
        self._states = states

    def _start(self, positions: torch.Tensor) -> None:
        """A new pass: its positions and rows per request (the runner's batch of this step)."""
        batch = self.runner.input_batch
        ends = self.runner.query_start_loc.np[: batch.num_reqs + 1].tolist()
        self._rows = {batch.req_ids[i]: (ends[i], ends[i + 1]) for i in range(batch.num_reqs)}
        self._positions = positions.clone()

    def _begin(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Before the first decoder layer: the pass starts, with layer 0's input (the
        embeddings) if it is one of the layers."""
        positions = kwargs["positions"] if "positions" in kwargs else args[0]
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[1]
        self._start(positions)
        # Layer 0's input is the embeddings, which the layers go on to update in place.
        self._states = {0: hidden.clone()} if 0 in self.layers else {}

    def _after(self, layer: int, module: Any, args: tuple, output: Any) -> None:
        hidden, residual = output  # a vLLM decoder layer's: the stream is their sum
        self._states[layer] = hidden + residual if residual is not None else hidden.clone()

    def take(self, request_ids: list[str]) -> dict[str, tuple[int, Any]]:
        """Each request's rows of the last pass: (the position of its first row, float16 numpy
        [rows, len(layers) * hidden]). Requests not in that pass are left out."""
        spans = [(r, self._rows[r]) for r in request_ids if r in self._rows]
        if not spans or self._positions is None:
            return {}
        index = torch.cat([torch.arange(a, b) for _, (a, b) in spans]).to(self._positions.device)
        stacked = torch.cat([self._states[layer][index] for layer in self.layers], -1)
        rows = stacked.to(torch.float16).cpu().numpy()
        firsts = self._positions[index].cpu().tolist()
        out, at = {}, 0
        for request_id, (a, b) in spans:
            out[request_id] = (int(firsts[at]), rows[at : at + b - a])
            at += b - a
        return out
