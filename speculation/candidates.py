"""The target's top candidates at every position it verified, lined up with their input tokens.

The target computes logits for each verified position anyway (vLLM's compute_logits, one row per
draft plus one per request); a tap in the plugin keeps their top-k token ids. Token Recycling
(Luo et al. 2024) stores them as "after token t, the target considers c1..ck likely" and builds
its drafts from them; the speculation cache uses them to guess the token the target emits where a
draft is rejected. Pure logic: the rows, the batch and the drafts come in as plain sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Candidates = tuple[tuple[int, tuple[int, ...]], ...]  # (input token, next-token candidates)


def verified_candidates(
    top_rows: Sequence[Sequence[int]],
    sampled: Sequence[Sequence[int]],
    num_tokens: Sequence[int],
    token_ids: Any,  # 2-D: row i holds request i's committed tokens
    drafts: Sequence[Sequence[int]],
) -> list[Candidates]:
    """Per request of the batch, (input token, top candidates) for each position verified.

    Request i owns len(drafts[i]) + 1 consecutive rows: the one after its last committed token
    before the step, then one after each draft. A request in the middle of its prompt (nothing
    sampled) owns one row whose input token is unknown here; it gets nothing. Rows that do not
    add up to the batch (an engine that computed logits differently) give nothing at all.
    """
    counts = [len(d) + 1 for d in drafts]
    empty: list[Candidates] = [() for _ in drafts]
    if sum(counts) != len(top_rows):
        return empty
    out = empty
    row = 0
    for i, count in enumerate(counts):
        if sampled[i]:
            before = int(token_ids[i][int(num_tokens[i]) - len(sampled[i]) - 1])
            inputs = [before, *(int(t) for t in drafts[i])]
            out[i] = tuple(
                (token, tuple(int(c) for c in top_rows[row + j])) for j, token in enumerate(inputs)
            )
        row += count
    return out


def verification_rows(query_ends: Sequence[int], drafts: Sequence[Sequence[int]]) -> list[int]:
    """Positions of the batch's flat token sequence under verification: for every request with
    a draft, its last len(draft) + 1 positions (the token before the draft, then each draft
    token), where `query_ends[i]` ends request i's positions. Mirror-SD's early exit reads
    these rows."""
    rows: list[int] = []
    for end, draft in zip(query_ends, drafts, strict=False):
        if draft:
            rows += range(int(end) - len(draft) - 1, int(end))
    return rows
