"""The measured cost of verification: a 1-token target step against a (k+1)-token step.

Speculation's ideal speedup is E(alpha, k) only if verifying k+1 tokens costs what one decoding
step costs; on a CPU it does not. vLLM measures it itself: with prefix caching, a prompt P is
prefilled once, then P plus 1 new token and P plus k+1 new tokens are each run with
max_tokens=1, so each request is one forward over just its uncached tokens, with P as context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import cycle, islice

from tandem.benchmarks import arithmetic

# (token ids) -> (seconds for one max_tokens=1 request, prompt tokens served from the cache)
ForwardOnce = Callable[[Sequence[int]], tuple[float, int]]


def context_tokens(prompts: Sequence[Sequence[int]], length: int) -> list[int]:
    """`length` tokens of real prompt text (prompts repeated end to end as needed)."""
    pool = [t for ids in prompts for t in ids]
    if not pool:
        raise ValueError("no prompt tokens to build a context from")
    return list(islice(cycle(pool), length))


def context_length(prompt_lengths: Sequence[int], max_new_tokens: int, block_size: int) -> int:
    """A typical decoding context (median prompt plus half the new tokens), rounded to whole
    cache blocks: the prefix cache only reuses full blocks, and P must be reused entirely."""
    typical = arithmetic.median(prompt_lengths) + max_new_tokens / 2
    return max(1, round(typical / block_size)) * block_size


def measure(
    forward_once: ForwardOnce, context: Sequence[int], k: int, repeats: int = 5
) -> dict[str, object]:
    """Median times of a 1-token and a (k+1)-token forward over `context`, and their ratio.

    The pairs alternate so drift hits both alike; a first pair only warms the cache.
    """
    context = list(context)
    extra = context_tokens([context], k + 1)
    forward_once(context)  # prefill P into the prefix cache
    one, verify, cached = [], [], []
    for i in range(repeats + 1):
        t_one, c_one = forward_once(context + extra[:1])
        t_verify, c_verify = forward_once(context + extra)
        if i > 0:
            one.append(t_one)
            verify.append(t_verify)
            cached += [c_one, c_verify]
    t1, tv = arithmetic.median(one), arithmetic.median(verify)
    hit = all(c == len(context) for c in cached)
    return {
        "method": "vLLM, prefix-cached context, max_tokens=1 requests, medians",
        "context_tokens": len(context),
        "verify_tokens": k + 1,
        "repeats": repeats,
        "t_one_token_s": t1,
        "t_verify_s": tv,
        # Without a prefix-cache hit each request recomputed the whole context: no ratio then.
        "cost_ratio": arithmetic.cost_ratio(t1, tv) if hit else None,
        "context_cached": hit,
        "samples_one_token_s": one,
        "samples_verify_s": verify,
    }
