"""The benchmark's arithmetic, and nothing else: no vLLM, no Ray, no I/O.

Every figure in the report is one of these functions applied to measured numbers, so the
definitions can be read (and tested) in one place.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence


def tokens_per_s(tokens: int, seconds: float) -> float:
    """Spec-Bench's speed: new tokens divided by wall time."""
    if seconds <= 0:
        raise ValueError(f"wall time must be > 0, got {seconds}")
    return tokens / seconds


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between ranks like numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def speedup_of_means(system_tps: Sequence[float], baseline_tps: Sequence[float]) -> float:
    """Spec-Bench's speedup: mean tokens/s of the system over mean tokens/s of the baseline."""
    return mean(system_tps) / mean(baseline_tps)


def median_of_ratios(system_tps: Sequence[float], baseline_tps: Sequence[float]) -> float:
    """The median over prompts of (system tokens/s / baseline tokens/s), prompt by prompt.

    Less sensitive than the ratio of means to a few long or fast prompts.
    """
    if len(system_tps) != len(baseline_tps):
        raise ValueError(
            f"paired values needed: {len(system_tps)} system vs {len(baseline_tps)} baseline"
        )
    return median([s / b for s, b in zip(system_tps, baseline_tps, strict=True)])


def expected_tokens_per_forward(alpha: float, k: int) -> float:
    """E = (1 - alpha^(k+1)) / (1 - alpha): tokens per target forward when each of k drafted
    tokens is accepted independently with probability alpha (the bonus token included).

    Its limit as alpha -> 1 is k + 1.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"acceptance rate must be in [0, 1], got {alpha}")
    if k < 0:
        raise ValueError(f"draft length must be >= 0, got {k}")
    if math.isclose(alpha, 1.0):
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def cost_ratio(t_one_token_s: float, t_verify_s: float) -> float:
    """The cost of a 1-token target step relative to a (k+1)-token verification step."""
    if t_one_token_s <= 0 or t_verify_s <= 0:
        raise ValueError("step times must be > 0")
    return t_one_token_s / t_verify_s


def ideal_speedup(alpha: float, k: int, step_cost_ratio: float) -> float:
    """The best speedup speculation could reach: E(alpha, k) tokens per verification step, each
    step costing 1 / step_cost_ratio plain target steps (drafting taken as free)."""
    return expected_tokens_per_forward(alpha, k) * step_cost_ratio


def draft_bound_speedup(ideal: float, t_verify_s: float, miss_rate: float, draft_s: float) -> float:
    """The ideal speedup less the drafting left on the critical path: a step whose block was
    not pre-drafted (every step, without pipelining) also waits `draft_s` for a just-in-time
    draft. Round trips and other overheads still count as free."""
    if t_verify_s <= 0 or not 0 <= miss_rate <= 1 or draft_s < 0:
        raise ValueError("need t_verify_s > 0, miss_rate in [0, 1] and draft_s >= 0")
    return ideal * t_verify_s / (t_verify_s + miss_rate * draft_s)


def achieved_fraction(speedup: float, ideal: float) -> float:
    """How much of the ideal the measured speedup reached."""
    if ideal <= 0:
        raise ValueError(f"ideal speedup must be > 0, got {ideal}")
    return speedup / ideal


def mismatches(
    outputs: Mapping[Hashable, Sequence[int]], baseline: Mapping[Hashable, Sequence[int]]
) -> list[Hashable]:
    """The keys whose token ids differ from the baseline's, token for token (length included)."""
    return [key for key, ids in outputs.items() if list(ids) != list(baseline[key])]
