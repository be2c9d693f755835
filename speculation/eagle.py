"""The EAGLE-3 head's runtime: mode `eagle`, drafting from the target's features.

The head (tandem.speculation.eagle_head) reads, at its "grid position" p, token x_{p+1} paired
with a hidden vector: fc(f_p) when the target's feature for p is known (a *settled* position,
kept in the request's head KV cache), the head's own output at p - 1 otherwise (a *provisional*
position: drafted or under verification, cropped as soon as the target's features for it arrive
or its token is rejected).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from tandem.speculation.candidates import Candidates
from tandem.speculation.eagle_head import Eagle3Head, load_head
from tandem.speculation.source import DrafterSetup, DraftJob, DraftSource, History, common_prefix

# Feature rows a request's History holds for the head at most (~3.4 kB each on the default
# model): the head's attention reaches back that far after a long stretch without it.
PENDING_ROWS = 1024

# ---- the runtime --------------------------------------------------------------------------------


@dataclass
class EagleState:
    """One request's head state.

    Grid positions [base, settled) hold keys/values computed from the target's features; they
    never change. Positions [settled, settled + len(branch)) are provisional: computed from the
    head's own outputs for tokens the target has not processed yet (drafts, a block under
    verification). They are reused while their tokens still apply and cropped otherwise.
    `base` is 0 unless the state started late (its first features were for a later position,
    e.g. on a drafter that restarted): positions before it are simply not attended to.

    `head` is the version of the head that computed the cache: a state drafts with it until
    the request ends, so a newer version swapped in by online learning never reads keys and
    values an older one wrote (new requests start on the newest version).
    """

    head: Eagle3Head
    base: int = 0  # the grid position of cache slot 0
    pending: torch.Tensor | None = None  # features received for grid positions >= settled
    k: torch.Tensor | None = None  # [kv_heads, capacity, head_dim]
    v: torch.Tensor | None = None
    settled: int = 0  # (absolute grid position, like every position here)
    settled_out: torch.Tensor | None = None  # the head's output at grid position settled - 1
    branch: list[int] = field(default_factory=list)  # tokens of the provisional positions
    branch_out: list[torch.Tensor] = field(default_factory=list)  # outputs there

    @property
    def received(self) -> int:
        """Features received: positions base..received-1."""
        return self.settled + (0 if self.pending is None else len(self.pending))

    @property
    def used(self) -> int:
        """Cache slots holding keys/values (settled and provisional)."""
        return self.settled + len(self.branch) - self.base


class EagleDrafter(DraftSource):
    """Mode `eagle`: drafts with an EAGLE-3 head from the target's auxiliary features, one
    state per request (in its History; the features arrive with its committed tokens).

    The runtime, usable without a drafter (what `propose_batch` calls):

    - `new_state()`: an empty state for a new request.
    - `draft(state, tokens, features_for_new_tokens, k) -> list[int]`: k target token ids that
      follow `tokens`: the request's committed sequence x_0..x_n (prompt and accepted output,
      the target's bonus token last), optionally followed by uncommitted tokens (a block under
      verification). `features_for_new_tokens` holds the target's auxiliary features
      ([m, num_aux * hidden], any float dtype) for the positions this state has had none for
      yet, in order: position p's row is what the target computed while reading x_p. Normally
      that is every committed position but the last, whose token the target has not read yet.
      Features may lag: positions without them are read from the head's own outputs until they
      arrive. Fewer than k tokens only when no feature has arrived at all.
    - `draft_many(state, tokens, features_for_new_tokens, extras, k) -> list[list[int]]`: for
      each `extra` (uncommitted tokens after `tokens`, e.g. a verification outcome of the block
      under verification: its accepted drafts and the token the target emits after them), k
      tokens after tokens + extra. All of them run batched, one forward per drafted token,
      over the provisional positions they share (the block's).
    """

    def __init__(
        self,
        head_dir: str | Path,
        target_dir: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.head = load_head(head_dir, target_dir, self.device, dtype)
        self.cfg = self.head.cfg

    name = "eagle"

    @classmethod
    def build(cls, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> EagleDrafter | None:
        """The head on the drafter's device; None without a head (or without its target)."""
        if setup.eagle_head is None or setup.target is None:
            return None
        dtype = getattr(torch, setup.config.drafters.eagle_dtype)
        return cls(setup.eagle_head, setup.target, setup.devices[0], dtype)

    def observe(self, history: History, new: Sequence[int], candidates: Candidates) -> None:
        """Features wait in the History until the head drafts for the request, which `auto`
        may not ask of it for a long time: beyond PENDING_ROWS the oldest go, and the head
        starts again after that gap when it is asked (a late start)."""
        pending = sum(len(rows) for _, rows in history.features)
        while history.features and pending > PENDING_ROWS:
            pending -= len(history.features.pop(0)[1])

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        return self.propose_batch([DraftJob(history, tuple(extra), k)])[0]

    def propose_batch(self, jobs: Sequence[DraftJob]) -> list[list[int]]:
        """Jobs of one request (a pre-draft's outcomes) run batched over what they share."""
        out: list[list[int]] = [[] for _ in jobs]
        by_request: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_request.setdefault(id(job.history), []).append(i)
        for indices in by_request.values():
            history = jobs[indices[0]].history
            state = history.state.get(self.name)
            if state is None:
                state = history.state[self.name] = self.new_state()
            start, features = _take_features(history, state.received)
            if start is not None and start != state.received:  # a gap: start again from here
                state = history.state[self.name] = self.new_state()
            extras = [jobs[i].extra for i in indices]
            k = max(jobs[i].k for i in indices)
            drafts = self.draft_many(state, history.tokens, features, extras, k, start)
            for i, draft in zip(indices, drafts, strict=True):
                out[i] = draft[: jobs[i].k]
        return out

    def new_state(self, head: Eagle3Head | None = None) -> EagleState:
        """An empty state on `head` (default: the version serving now)."""
        return EagleState(head or self.head)

    def swap(self, head: Eagle3Head) -> None:
        """Serve a new version of the head (same config and vocabulary) from the next state
        on: one reference, replaced between drafting calls (the caller holds the drafter's
        core); states keep the version their cache was computed with."""
        self.head = head

    @torch.inference_mode()
    def draft(
        self,
        state: EagleState,
        tokens: Sequence[int],
        features_for_new_tokens: torch.Tensor | None,
        k: int,
        features_start: int | None = None,
    ) -> list[int]:
        self._sync(state, tokens, features_for_new_tokens, features_start)
        prefix = list(tokens[state.settled + 1 :])
        draft: list[int] = []
        while len(draft) < k:
            out = self._extend(state, prefix + draft)
            if out is None:
                return []
            draft.append(int(state.head.to_target(state.head.logits(out).argmax(-1))))
        return draft

    @torch.inference_mode()
    def draft_many(
        self,
        state: EagleState,
        tokens: Sequence[int],
        features_for_new_tokens: torch.Tensor | None,
        extras: Sequence[Sequence[int]],
        k: int,
        features_start: int | None = None,
    ) -> list[list[int]]:
        self._sync(state, tokens, features_for_new_tokens, features_start)
        prefix = list(tokens[state.settled + 1 :])
        # The chain every extra but its last token lies on (a block's prefixes); extras off it,
        # or empty ones, are drafted one by one.
        chain = list(max((e[:-1] for e in extras), key=len, default=()))
        batched = [i for i, e in enumerate(extras) if e and list(e[:-1]) == chain[: len(e) - 1]]
        out: list[list[int]] = [[] for _ in extras]
        for i in sorted(set(range(len(extras))) - set(batched)):
            out[i] = self.draft(state, [*tokens, *extras[i]], None, k)
        if not batched or k <= 0 or self._extend(state, prefix + chain) is None:
            return out
        head = state.head
        # Row b starts at the grid position of its extra's last token, from the output before.
        starts = torch.tensor(
            [state.settled + len(prefix) + len(extras[i]) - 1 for i in batched], device=self.device
        )
        hidden = torch.stack([self._output_before(state, int(s)) for s in starts])
        current = torch.tensor([extras[i][-1] for i in batched], device=self.device)
        shared = state.settled + len(state.branch)
        # Each row sees the cache before its own start, then its own chain.
        visible = torch.arange(state.base, shared, device=self.device) < starts[:, None]
        rows = len(batched)
        own_k, own_v, drafts = [], [], []
        for step in range(k):
            q, kk, vv, residual = head.project(
                current[:, None], hidden[:, None], (starts + step)[:, None]
            )
            own_k.append(kk)
            own_v.append(vv)
            keys = torch.cat([state.k[:, : state.used].expand(rows, -1, -1, -1), *own_k], 2)
            values = torch.cat([state.v[:, : state.used].expand(rows, -1, -1, -1), *own_v], 2)
            mask = torch.cat([visible, visible.new_ones(rows, step + 1)], 1)
            attended = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask[:, None, None, :], enable_gqa=True
            )
            hidden = head.finish(attended, residual)[:, 0]
            current = head.to_target(head.logits(hidden).argmax(-1))
            drafts.append(current)
        for i, row in zip(batched, torch.stack(drafts, 1).tolist(), strict=True):
            out[i] = row
        return out

    # ---- state ----------------------------------------------------------------------------------

    def _sync(
        self,
        state: EagleState,
        tokens: Sequence[int],
        features: torch.Tensor | None,
        features_start: int | None = None,
    ) -> None:
        """Take in new features (from position `features_start`, by default the next one the
        state expects); settle every position that has its feature and next token."""
        if features_start is not None and features_start != state.received:
            if state.k is not None or state.received:
                raise ValueError(
                    f"features must continue at position {state.received}, not {features_start}"
                )
            state.base = state.settled = features_start  # a late start
        if features is not None and len(features):
            features = features.to(self.device, self.dtype)
            state.pending = (
                features if state.pending is None else torch.cat([state.pending, features])
            )
        have = 0 if state.pending is None else len(state.pending)
        target = min(state.settled + have, len(tokens) - 1)
        count = target - state.settled
        if count <= 0:
            return
        state.branch, state.branch_out = [], []  # features arrived: provisional work is stale
        start = state.settled
        ids = torch.tensor(tokens[start + 1 : target + 1], device=self.device)
        hidden = state.head.fuse(state.pending[:count])
        out = self._forward(state, start, ids, hidden)
        state.pending = state.pending[count:]
        state.settled = target
        state.settled_out = out[-1]

    def _extend(self, state: EagleState, wanted: list[int]) -> torch.Tensor | None:
        """Make the provisional positions hold exactly `wanted` (reusing the common prefix);
        returns the head's output at the last one (or at the last settled position)."""
        keep = common_prefix(state.branch, wanted)
        del state.branch[keep:], state.branch_out[keep:]
        for token in wanted[keep:]:
            previous = state.branch_out[-1] if state.branch_out else state.settled_out
            if previous is None:
                return None  # no feature yet: nothing to draft from
            start = state.settled + len(state.branch)
            tokens = torch.tensor([token], device=self.device)
            out = self._forward(state, start, tokens, previous[None])
            state.branch.append(token)
            state.branch_out.append(out[-1])
        return state.branch_out[-1] if state.branch_out else state.settled_out

    def _output_before(self, state: EagleState, grid: int) -> torch.Tensor:
        index = grid - state.settled - 1
        return state.branch_out[index] if index >= 0 else state.settled_out

    def _forward(
        self, state: EagleState, start: int, tokens: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """Run grid positions start.. (tokens paired with hidden vectors) over the cache before
        them, write their keys/values at start.., return their outputs."""
        n = len(tokens)
        positions = torch.arange(start, start + n, device=self.device)
        q, k, v, residual = state.head.project(tokens, hidden, positions)
        slot = start - state.base
        self._reserve(state, slot + n)
        state.k[:, slot : slot + n] = k
        state.v[:, slot : slot + n] = v
        keys, values = state.k[:, : slot + n], state.v[:, : slot + n]
        mask = torch.arange(state.base, start + n, device=self.device) <= positions[:, None]
        attended = F.scaled_dot_product_attention(
            q[None], keys[None], values[None], attn_mask=mask, enable_gqa=True
        )[0]
        return state.head.finish(attended, residual)

    def _reserve(self, state: EagleState, size: int) -> None:
        capacity = 0 if state.k is None else state.k.shape[1]
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 256)
        cfg = self.cfg
        shape = (cfg.num_key_value_heads, capacity, cfg.head_dim)
        k = torch.empty(shape, device=self.device, dtype=self.dtype)
        v = torch.empty_like(k)
        if state.k is not None:
            k[:, : state.used] = state.k[:, : state.used]
            v[:, : state.used] = state.v[:, : state.used]
        state.k, state.v = k, v


def _take_features(history: History, received: int) -> tuple[int | None, torch.Tensor | None]:
    """The request's features from position `received` on, taken out of its History: (the
    position of the first row, the rows). Rows a state already holds are skipped. After a gap
    (a drafter that restarted receives only the features sent since) the rows start later."""
    first, rows = None, []
    for start, block in history.features:
        if first is not None and start > received:
            break  # a second gap: what follows it is of no use
        skip = max(0, received - start)
        if skip < len(block):
            first = start + skip if first is None else first
            rows.append(block[skip:])
            received = start + len(block)
    history.features.clear()
    return first, (torch.from_numpy(np.concatenate(rows)) if rows else None)
