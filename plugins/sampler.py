"""tandem's exact speculative sampler, put in place of the forward of vLLM's rejection sampler
(`vllm/v1/sample/rejection_sampler.py`, `RejectionSampler.forward`) in the target's worker.

Why: vLLM 0.32 verifies the drafts of sampled requests wrongly on the CPU
(docs/known-vllm-issues.md). `apply_sampling_constraints` spreads each request's temperature, top_k
and top_p over its draft positions with `expand_batch_to_tokens`, whose CPU stand-in for the Triton
kernel (`vllm/utils/cpu_triton_utils.py`, `_expand_kernel_impl`) writes into an int64 copy of its
output and drops it: draft positions are sampled with whatever the uninitialised tensor held
(tokens from nowhere; a top_k past the vocabulary fails the whole step). On every platform, min_p
is not applied at draft positions at all.

How: each position a request emits is sampled exactly as a plain decoding step samples it, by
vLLM's own pieces in vLLM's order (`Sampler.sample`): the request's logits processors,
temperature, min_p, top_k and top_p, then vLLM's sampler with one draw from the request's
generator. Positions go in order, one batched pass each, and a request stops at its first
rejection:

- a draft without probabilities (every tandem drafter, vLLM's n-gram) is accepted when the token
  sampled at its position equals it. That is Leviathan et al.'s rule for a deterministic draft d:
  accepted with probability p(d); on rejection the token is p without d, renormalised (the
  residual max(p - onehot(d), 0)). Every emitted token follows the target's distribution.
- a draft with probabilities q (vLLM's in-process draft models) is accepted with probability
  min(1, p(d) / q(d)); on rejection the token is drawn from max(p - q, 0), renormalised.
- a placeholder draft (-1: vLLM pads new requests to the batch's draft length) is never accepted;
  the token sampled at its position is emitted.

A request draws from its seeded generator only at the positions it emits, in order, so its n-th
output token uses the n-th draw, as without speculation: with drafts without probabilities, a seed
gives the same tokens with or without drafts (up to floating-point differences between verifying
several positions in one forward pass and decoding one). All-greedy batches keep vLLM's own path,
which is exact.

min_p: vLLM 0.32 refuses it in an engine with speculation and loads no min_p processor there. The
target passes it in `SamplingParams.extra_args[MIN_P]` instead, and `install` adds vLLM's min_p
processor, reading it from there, to the worker's batch (`ExtraArgsMinP`).
"""

from __future__ import annotations

import dataclasses
import itertools
import types
from typing import Any

import torch
from vllm.utils.torch_utils import PIN_MEMORY
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

WRITTEN_FOR = "0.32."  # vLLM versions this replacement was written for and tested on
MIN_P = "tandem_min_p"  # the SamplingParams.extra_args key that carries a request's min_p
PLACEHOLDER = -1  # vLLM's padded draft slot, and its marker for output slots left empty
SAMPLING_EPS = 1e-5  # vLLM's: a temperature below it is greedy (vllm/v1/sample/sampler.py)


def install(runner: Any, any_vllm: bool) -> bool:
    """Put `forward` in place of the model runner's rejection sampler's, and min_p in its batch;
    False if already done. Refuses a vLLM it was not written for unless `any_vllm`
    (speculation.sampler.any_vllm)."""
    import vllm

    if not vllm.__version__.startswith(WRITTEN_FOR) and not any_vllm:
        raise RuntimeError(
            f"tandem's speculative sampler was written for vLLM {WRITTEN_FOR}x and this is vLLM "
            f"{vllm.__version__}: set speculation.sampler.kind: vllm to verify drafts with vLLM's "
            "own rejection sampler, or speculation.sampler.any_vllm: true to use tandem's anyway"
        )
    rejection_sampler = runner.rejection_sampler
    if rejection_sampler.synthetic_mode or rejection_sampler.is_processed_logprobs_mode:
        raise RuntimeError(
            "tandem's speculative sampler supports neither synthetic rejection sampling nor "
            "processed logprobs modes: set speculation.sampler.kind: vllm"
        )
    if getattr(rejection_sampler.forward, "__func__", None) is forward:
        return False
    rejection_sampler.forward = types.MethodType(forward, rejection_sampler)
    min_p = ExtraArgsMinP(runner.vllm_config, runner.device, PIN_MEMORY)
    runner.input_batch.logitsprocs.argmax_invariant.append(min_p)
    return True


class ExtraArgsMinP(MinPLogitsProcessor):
    """vLLM's min_p processor, reading each request's min_p from `extra_args[MIN_P]`."""

    def update_state(self, batch_update: Any) -> None:
        if batch_update is not None:
            added = [
                (
                    index,
                    types.SimpleNamespace(min_p=(params.extra_args or {}).get(MIN_P, 0.0)),
                    *rest,
                )
                for index, params, *rest in batch_update.added
            ]
            batch_update = dataclasses.replace(batch_update, added=added)
        super().update_state(batch_update)


def forward(
    self: Any,  # vllm.v1.sample.rejection_sampler.RejectionSampler
    metadata: Any,  # SpecDecodeMetadata
    draft_probs: torch.Tensor | None,  # [drafted positions, vocab] or None
    logits: torch.Tensor,  # [drafted positions + requests, vocab]
    sampling_metadata: Any,  # SamplingMetadata
) -> SamplerOutput:
    """RejectionSampler.forward's contract: per request, its emitted tokens, then PLACEHOLDER."""
    sm = sampling_metadata
    if sm.all_greedy:
        return type(self).forward(self, metadata, draft_probs, logits, sm)
    counts = metadata.num_draft_tokens
    starts = [0, *itertools.accumulate(counts)][:-1]
    drafts = metadata.draft_token_ids.tolist()
    raw_drafted = logits[metadata.target_logits_indices].to(torch.float32)
    raw_bonus = logits[metadata.bonus_logits_indices].to(torch.float32)
    # The processors that read earlier tokens (penalties, bad words, min_tokens), applied to each
    # kind of row as vLLM applies them: bonus rows first, as vLLM's bonus sampler does.
    bonus = self.sampler.apply_logits_processors(raw_bonus.clone(), sm, predict_bonus_token=True)
    drafted = self.apply_logits_processors(raw_drafted.clone(), sm, metadata)
    rows = torch.cat([drafted, bonus])  # drafted positions, then one bonus row per request
    output = [[PLACEHOLDER] * (metadata.max_spec_len + 1) for _ in counts]
    live = set(range(len(counts)))  # requests whose drafts so far were all accepted
    for position in range(metadata.max_spec_len + 1):
        # Row i: request i's logits at this position (its bonus row once past its drafts).
        index = [
            start + position if position < count else len(drafts) + i
            for i, (start, count) in enumerate(zip(starts, counts, strict=True))
        ]
        generators = {i: g for i, g in sm.generators.items() if i in live}
        tokens, processed = sample_position(self.sampler, rows[index], sm, generators)
        tokens = tokens.tolist()
        accepted = set()
        for i in live:
            token = tokens[i]
            if position < counts[i]:
                draft = drafts[starts[i] + position]
                if draft_probs is not None and draft >= 0 and sm.temperature[i] >= SAMPLING_EPS:
                    q = draft_probs[starts[i] + position]
                    token = leviathan(processed[i], q, draft, sm.generators.get(i))
                if token == draft:
                    accepted.add(i)
            output[i][position] = token
        live = accepted
        if not live:
            break
    output_token_ids = torch.tensor(output, dtype=torch.int32, device=logits.device)
    logprobs = None
    if sm.max_num_logprobs is not None:  # raw logprobs modes only (install refuses the others)
        logprobs = self._get_logprobs_tensors(
            sm.max_num_logprobs, metadata, logits, raw_drafted, raw_bonus, output_token_ids
        )
    return SamplerOutput(sampled_token_ids=output_token_ids, logprobs_tensors=logprobs)


def sample_position(
    sampler: Any, logits: torch.Tensor, sm: Any, generators: dict[int, torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row, sampled as `Sampler.sample` samples a decoding step (one draw from
    each generator given); also the processed logits (temperature, min_p, top_k, top_p)."""
    greedy = None if sm.all_random else sampler.greedy_sample(logits)
    logits = sampler.apply_temperature(logits, sm.temperature, sm.all_random)
    for processor in sm.logitsprocs.argmax_invariant:  # min_p
        logits = processor.apply(logits)
    logits = apply_top_k_top_p(logits, sm.top_k, sm.top_p)
    sampled, _ = sampler.topk_topp_sampler(logits, generators, None, None)
    if greedy is not None:
        sampled = torch.where(sm.temperature < SAMPLING_EPS, greedy, sampled)
    return sampled, logits


def leviathan(
    logits: torch.Tensor, q: torch.Tensor, draft: int, generator: torch.Generator | None
) -> int:
    """Verify a draft drawn from q against the target's processed logits: the draft, or a token
    drawn from the residual max(p - q, 0)."""
    p = logits.softmax(dim=-1, dtype=torch.float32)
    u = torch.rand((), dtype=torch.float64, device=p.device, generator=generator)
    if q[draft] > 0 and p[draft] >= u * q[draft]:
        return draft
    residual = (p - q).clamp_(min=0)
    noise = torch.empty_like(residual).exponential_(generator=generator)
    return int(residual.div_(noise).argmax())
