"""EAGLE-3's training-time test: the head unrolled for several steps per position, each reading
the previous step's output as drafting does, and its loss against the target's soft labels.

Step 0 reads the target's features at every position t (token x_{t+1}, features f_t) and
predicts x_{t+2}; step i reads, at the same grid position, the head's own output of step i - 1
and token x_{t+1+i}, at rotary position t + i, and predicts x_{t+2+i}. Its attention sees step
0's keys at positions <= t and the keys of steps 1..i at t itself: exactly what the runtime sees
when it drafts its (i+1)-th token after committed position t. A position counts at step i only
where the text follows the target's greedy choices up to there (as drafts must, to be accepted).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tandem.speculation.eagle_head import Eagle3Head


def ttt_loss(
    head: Eagle3Head, draft_index: torch.Tensor, batch: dict[str, torch.Tensor], steps: int
) -> dict[str, torch.Tensor]:
    """Soft cross-entropy against the target over `steps` unrolled steps, and per-step top-1
    agreement with the target's greedy choice (over the full vocabulary). `draft_index` maps a
    target id to its draft id (-1: outside the draft vocabulary)."""
    tokens, greedy = batch["tokens"], batch["greedy"]
    length = tokens.shape[1]
    grid = torch.arange(length, device=tokens.device)
    active = chains(tokens, greedy, batch["lengths"], steps)
    with torch.no_grad():  # the target's top-k after each position, renormalised in the vocab
        label_ids = draft_index[batch["topk_ids"]]
        inside = label_ids >= 0
        label_p = batch["topk_logp"].exp() * inside
        label_p = label_p / label_p.sum(-1, keepdim=True).clamp(min=1e-9)
        label_ids = label_ids.clamp(min=0)
    total = tokens.new_zeros((), dtype=torch.float32)
    stats: dict[str, torch.Tensor] = {}
    for i, (mask, out) in enumerate(
        zip(active, unroll(head, tokens, batch["aux"], active), strict=True)
    ):
        # Step i's output at grid t predicts x_{t+2+i}: the target's choice after t+1+i.
        at = (grid + 1 + i).clamp(max=length - 1).expand_as(mask)[mask]
        rows = mask.nonzero()[:, 0]
        logits = head.logits(out)
        count = max(1, len(rows))
        log_p = logits.float().log_softmax(-1).gather(-1, label_ids[rows, at])
        loss = -(label_p[rows, at] * log_p).sum() / count
        total = total + loss
        hit = head.to_target(logits.argmax(-1)) == greedy[rows, at]
        stats[f"loss{i}"] = loss.detach()
        stats[f"acc{i}"] = hit.float().sum() / count
    stats["loss"] = total
    return stats


def chains(
    tokens: torch.Tensor, greedy: torch.Tensor, lengths: torch.Tensor, steps: int
) -> list[torch.Tensor]:
    """Per step, the grid positions [B, T] whose chain the runtime can meet: step i at grid t
    reads x_{t+1}..x_{t+1+i}, and drafts are accepted only while every one of them was the
    target's own greedy choice; its label x_{t+2+i}'s position must lie inside the text."""
    length = tokens.shape[1]
    grid = torch.arange(length, device=tokens.device)
    follows = grid[None, :] >= 0
    out = []
    for i in range(steps):
        at = (grid + 1 + i).clamp(max=length - 1)
        inside = (grid + 1 + i)[None, :] < lengths[:, None]
        follows = follows & inside & (tokens[:, at] == greedy[:, at - 1])
        out.append(follows)
    return out


def unroll(
    head: Eagle3Head,
    tokens: torch.Tensor,
    aux: torch.Tensor,
    active: list[torch.Tensor] | int,
) -> Iterator[torch.Tensor]:
    """The head's outputs, one training-time-test step after another. Step i's output at grid
    t is the runtime's when it drafts its (i+1)-th token after committed x_0..x_{t+1}, having
    drafted x_{t+2}..x_{t+1+i} before.

    `active`: per step, the positions [B, T] whose outputs are wanted; outputs come as rows in
    that order ([N, hidden]) and only those rows pay for the layer's MLP and the LM head. A
    number of steps instead: every position, [B, T, hidden].
    """
    size, length = tokens.shape
    grid = torch.arange(length, device=tokens.device)
    steps = active if isinstance(active, int) else len(active)
    hidden = head.fuse(aux)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for i in range(steps):
        token = tokens[:, (grid + 1 + i).clamp(max=length - 1)]
        q, k, v, residual = head.project(token, hidden, (grid + i).expand(size, -1))
        keys.append(k)
        values.append(v)
        attended = ttt_attention(q, keys, values, head.kv_repeat()).transpose(1, 2).flatten(2)
        if isinstance(active, int):
            hidden = head.finish_rows(attended, residual)
            yield hidden
            continue
        mask = active[i]
        rows = head.finish_rows(attended[mask], residual[mask])
        hidden = residual.new_zeros(residual.shape).index_put((mask,), rows)
        yield rows


def ttt_attention(
    q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], repeat: int
) -> torch.Tensor:
    """q: [B, heads, T, d] of step i = len(keys) - 1. Step 0's keys are attended causally,
    every later step's only at the query's own grid position."""
    scale = q.shape[-1] ** -0.5
    k0 = keys[0].repeat_interleave(repeat, 1)
    v0 = values[0].repeat_interleave(repeat, 1)
    length = q.shape[-2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    scores = [(q @ k0.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))]
    for k in keys[1:]:
        scores.append((q * k.repeat_interleave(repeat, 1)).sum(-1, keepdim=True) * scale)
    p = torch.cat(scores, -1).softmax(-1)
    out = p[..., :length] @ v0
    for j, v in enumerate(values[1:]):
        out = out + p[..., length + j, None] * v.repeat_interleave(repeat, 1)
    return out
