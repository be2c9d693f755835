"""What goes into vLLM for one request and what comes out, as plain values: SamplingParams from
the keyword arguments the front door checked, and log-probabilities as tuples that cross Ray.

Here, not in the target actor, because both know vLLM's types and tandem's sampler's conventions.
"""

from __future__ import annotations

from typing import Any


class Refused(ValueError):
    """vLLM refused a request's parameters (building them, or adding the request)."""


def refusal(exc: BaseException) -> BaseException:
    """`exc` as a Refused where it is vLLM refusing the request (its client errors and
    ValueErrors), else unchanged."""
    from vllm.exceptions import VLLMClientError

    return Refused(str(exc)) if isinstance(exc, (ValueError, VLLMClientError)) else exc


def sampling_params(sampling: dict[str, Any], exact_sampler: bool) -> Any:
    """vllm.SamplingParams (outputs as deltas) from `sampling`'s keyword arguments. tandem's exact
    sampler (plugins/sampler.py) applies min_p itself, so it travels in extra_args there; a
    structured_outputs dict becomes vLLM's StructuredOutputsParams. Raises Refused where vLLM
    refuses a value."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    from tandem.plugins.sampler import MIN_P

    if exact_sampler and "min_p" in sampling:
        sampling = {**sampling, "extra_args": {MIN_P: sampling["min_p"]}}
        del sampling["min_p"]
    try:
        if "structured_outputs" in sampling:
            constraint = StructuredOutputsParams(**sampling["structured_outputs"])
            sampling = {**sampling, "structured_outputs": constraint}
        return SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
    except Exception as exc:
        raise refusal(exc) from None


Entry = tuple[int, str, float, int]  # token id, its text, log-probability, rank


def positions(token_ids: list[int], logprobs: Any) -> list[tuple[Entry, list[Entry]]]:
    """vLLM's per-position logprob dicts as plain tuples (they cross Ray): the token at each
    position, and every entry vLLM gave there in its order (the sampled token first, then the
    most likely ones), which the OpenAI formats cut as vLLM's server does."""
    out = []
    for token_id, entries in zip(token_ids, logprobs, strict=True):
        top = [(t, lp.decoded_token or "", lp.logprob, lp.rank or 0) for t, lp in entries.items()]
        chosen = next(e for e in top if e[0] == token_id)
        out.append((chosen, top))
    return out
