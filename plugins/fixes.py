"""Work-arounds for vLLM 0.32 bugs that remote drafting runs into, applied inside the engine's
worker once it has started (TandemWorkerExtension.tandem_apply_fixes).

With speculation configured, every engine step goes through vLLM's rejection sampler, drafts or
not. When no request in a step has a draft and some request samples with top_k, the sampler
applies top-k to an empty [0, vocab] tensor and `k.max()` raises, failing every request of the
step. With remote drafting, steps without a draft are normal (no n-gram match, a drafter down).
"""

from __future__ import annotations

import functools

import torch


def apply() -> list[str]:
    """Apply every fix this vLLM needs; returns the names of those applied."""
    return ["empty-top-k"] if _guard_empty_top_k() else []


def _guard_empty_top_k() -> bool:
    from vllm.v1.sample.ops import topk_topp_sampler

    original = topk_topp_sampler.apply_top_k_only
    if getattr(original, "_tandem_guarded", False):
        return False

    @functools.wraps(original)
    def apply_top_k_only(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:  # nothing to mask
            return logits
        return original(logits, k)

    apply_top_k_only._tandem_guarded = True
    topk_topp_sampler.apply_top_k_only = apply_top_k_only
    return True
