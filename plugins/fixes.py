"""Work-arounds for vLLM 0.32 bugs that remote drafting runs into, applied inside the engine's
worker once it has started (TandemWorkerExtension.tandem_apply_fixes).

- `exact-sampler` (speculation.sampler.kind: tandem): tandem's exact speculative sampler
  (tandem.plugins.sampler) verifies drafts in place of vLLM's rejection sampler, which is not
  exact for sampled requests on the CPU and fails steps that mix top_k with drafts.
- `empty-top-k`: with speculation configured, every engine step goes through vLLM's rejection
  sampler, drafts or not. When no request in a step has a draft and some request samples with
  top_k, vLLM's sampler applies top-k to an empty [0, vocab] tensor and `k.max()` raises, failing
  every request of the step. With remote drafting, steps without a draft are normal (no n-gram
  match, a drafter down). tandem's sampler never does this; vLLM's own still does.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def apply(runner: Any, exact_sampler: bool, any_vllm: bool) -> list[str]:
    """Apply every fix this vLLM needs; returns the names of those applied."""
    applied = ["empty-top-k"] if _guard_empty_top_k() else []
    if exact_sampler and getattr(runner, "rejection_sampler", None) is not None:
        from tandem.plugins import sampler

        if sampler.install(runner, any_vllm):
            applied.append("exact-sampler")
    return applied


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
