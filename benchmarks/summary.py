"""From measured records to the figures of the report: per system, per category, per
concurrency level. Pure (no engines), so the same records always give the same figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tandem.benchmarks import arithmetic
from tandem.benchmarks.records import ConcurrencyRun, RequestRecord


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": arithmetic.percentile(values, 50), "p90": arithmetic.percentile(values, 90)}


def _tps(record: RequestRecord) -> float:
    return arithmetic.tokens_per_s(record.new_tokens, record.wall_s)


def figures(
    records: Sequence[RequestRecord],
    baseline: Mapping[Any, RequestRecord],
    speculative: bool = False,
    k: int = 0,
    cost_ratio: float | None = None,
) -> dict[str, Any]:
    """The figures of one system over some prompts; `baseline` maps question_id to the
    baseline's record of the same prompt."""
    if not records:
        raise ValueError("no records")
    tps = [_tps(r) for r in records]
    base_tps = [_tps(baseline[r.question_id]) for r in records]
    tokens = sum(r.new_tokens for r in records)
    wall = sum(r.wall_s for r in records)
    forwards = sum(r.forwards for r in records)
    draft_tokens = sum(r.draft_tokens for r in records)
    accepted = sum(r.accepted_tokens for r in records)
    differ = arithmetic.mismatches(
        {r.question_id: r.token_ids for r in records},
        {r.question_id: baseline[r.question_id].token_ids for r in records},
    )
    speedup = arithmetic.speedup_of_means(tps, base_tps)
    # Decoding alone (1 / TPOT: the first token's prefill left out), the part speculation can
    # speed up; the prompts where both the system and the baseline decoded 2+ tokens.
    paired = [
        (r.tpot_s, baseline[r.question_id].tpot_s)
        for r in records
        if r.tpot_s and baseline[r.question_id].tpot_s
    ]
    decode_speedup = (
        arithmetic.speedup_of_means([1 / t for t, _ in paired], [1 / b for _, b in paired])
        if paired
        else None
    )
    alpha = accepted / draft_tokens if speculative and draft_tokens else None
    out: dict[str, Any] = {
        "prompts": len(records),
        "new_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": arithmetic.mean(tps),
        "tokens_per_s_aggregate": arithmetic.tokens_per_s(tokens, wall),
        "speedup": speedup,
        "speedup_median": arithmetic.median_of_ratios(tps, base_tps),
        "decode_speedup": decode_speedup,
        "mean_accepted_tokens": tokens / forwards if forwards else None,
        "acceptance_rate": alpha,
        "target_forwards": forwards,
        "drafts": None
        if any(r.drafts is None for r in records)
        else sum(r.drafts for r in records),
        "draft_tokens": draft_tokens,
        "accepted_tokens": accepted,
        "cache_hit_rate": _hit_rate(records),
        "skipped_wait_rate": _hit_rate(records, "skipped_waits"),
        "sources": _sources(records),
        "ttft_s": _spread([r.ttft_s for r in records]),
        "tpot_s": _spread([r.tpot_s for r in records if r.tpot_s is not None]),
        "mismatches": len(differ),
        "mismatched_question_ids": differ,
        "ideal": None,
    }
    if alpha is not None and cost_ratio is not None:
        e = arithmetic.expected_tokens_per_forward(alpha, k)
        ideal = arithmetic.ideal_speedup(alpha, k, cost_ratio)
        # E(alpha, k) assumes each drafted token is accepted independently; acceptance comes in
        # runs (a copied span is taken whole), so the measured tokens per forward can exceed
        # it. The same bound with the measured tokens per forward is given beside it.
        measured = (tokens / forwards) * cost_ratio if forwards else None
        out["ideal"] = {
            "alpha": alpha,
            "k": k,
            "expected_tokens_per_forward": e,
            "cost_ratio": cost_ratio,
            "ideal_speedup": ideal,
            "achieved_fraction": arithmetic.achieved_fraction(speedup, ideal),
            "ideal_speedup_measured_tokens_per_forward": measured,
            "achieved_fraction_measured_tokens_per_forward": (
                arithmetic.achieved_fraction(speedup, measured) if measured else None
            ),
        }
    return out


def system_entry(
    info: Mapping[str, Any],
    records: Sequence[RequestRecord],
    baseline: Sequence[RequestRecord],
    cost_ratio: float | None,
) -> dict[str, Any]:
    """One entry of the report's `systems` list: overall figures plus one set per category."""
    by_id = {r.question_id: r for r in baseline}
    speculative = bool(info.get("speculative"))
    k = int(info.get("num_speculative_tokens") or 0)
    entry = {**info, **figures(records, by_id, speculative, k, cost_ratio)}
    categories = list(dict.fromkeys(r.category for r in records))
    entry["categories"] = {
        c: figures([r for r in records if r.category == c], by_id, speculative, k, cost_ratio)
        for c in categories
    }
    return entry


def concurrency_entry(
    run: ConcurrencyRun,
    baseline_run: ConcurrencyRun | None,
    batch1: Mapping[Any, RequestRecord],
) -> dict[str, Any]:
    """Throughput and per-stream latency of one level; outputs are compared with the
    baseline's batch-1 outputs of the same prompts (batching may legitimately move ties)."""
    tokens = sum(r.new_tokens for r in run.requests)
    tps = arithmetic.tokens_per_s(tokens, run.wall_s)
    entry: dict[str, Any] = {
        "system": run.system,
        "concurrency": run.concurrency,
        "requests": len(run.requests),
        "output_tokens": tokens,
        "wall_s": run.wall_s,
        "tokens_per_s": tps,
        "speedup": None,
        "latency_s": _spread([r.wall_s for r in run.requests]),
        "ttft_s": _spread([r.ttft_s for r in run.requests]),
        "tpot_s": _spread([r.tpot_s for r in run.requests if r.tpot_s is not None]),
        "mismatches_vs_batch1_baseline": len(
            [
                r
                for r in run.requests
                if r.question_id in batch1 and r.token_ids != batch1[r.question_id].token_ids
            ]
        ),
    }
    if baseline_run is not None:
        base_tokens = sum(r.new_tokens for r in baseline_run.requests)
        entry["speedup"] = tps / arithmetic.tokens_per_s(base_tokens, baseline_run.wall_s)
    return entry


def _sources(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Drafted and accepted tokens by draft source, summed over the records."""
    sums: dict[str, list[int]] = {}
    for record in records:
        for name, (drafted, accepted) in record.sources.items():
            total = sums.setdefault(name, [0, 0])
            total[0] += drafted
            total[1] += accepted
    return {
        name: {
            "draft_tokens": drafted,
            "accepted_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else None,
        }
        for name, (drafted, accepted) in sorted(sums.items())
    }


def _hit_rate(records: Sequence[RequestRecord], count: str = "cache_hits") -> float | None:
    """Speculation-cache hits (or another count, such as misses not waited for) per pipelined
    lookup; None where nothing was pipelined."""
    lookups = sum(r.cache_hits + r.cache_misses for r in records)
    return sum(getattr(r, count) for r in records) / lookups if lookups else None


# The parts of the serving path (tandem.cluster.telemetry.figures.Breakdown's seconds), in path
# order. Inside vLLM's step: schedule + forward + proposer + output; the proposer's time includes
# its drafter round trips and its waits for pre-drafts.
STEP_PARTS = ("schedule", "forward", "proposer", "drafter_rtt", "predraft_wait", "output")
PATH_PARTS = ("between_steps", "handoff", "stream", "coordinator")


def breakdown_entry(
    system: str, concurrency: int, totals: Mapping[str, float], records: Sequence[RequestRecord]
) -> dict[str, Any]:
    """One system's serving breakdown at one concurrency level, per engine step (ms), from its
    summed timers (`totals`: Breakdown's fields); TPOT beside it, from the client's side."""
    steps = totals["steps"]
    ms = {part: 1e3 * totals[f"{part}_s"] / steps if steps else None for part in PATH_PARTS}
    ms.update({p: 1e3 * totals[f"{p}_s"] / steps if steps else None for p in STEP_PARTS})
    ms["step"] = 1e3 * totals["step_s"] / steps if steps else None
    tokens_per_step = totals["tokens"] / steps if steps else None
    # The engine's own pace, per token: a step and the time until the next one.
    period = ms["step"] + ms["between_steps"] if steps else None
    trips = totals["drafter_round_trips"]
    rtt_ms = 1e3 * totals["drafter_rtt_s"] / trips if trips else None
    wire = totals["drafter_bytes_sent"] + totals["drafter_bytes_received"]
    return {
        "system": system,
        "concurrency": concurrency,
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "ms_per_step": ms,
        "engine_ms_per_token": period / tokens_per_step if tokens_per_step else None,
        "client_tpot_s": _spread([r.tpot_s for r in records if r.tpot_s is not None]),
        "drafter_round_trips": trips,
        "drafter_rtt_mean_ms": rtt_ms,
        "drafter_rtt_of_step": rtt_ms / ms["step"] if rtt_ms and ms["step"] else None,
        "drafter_messages": totals["drafter_messages"],
        "drafter_bytes_per_message": wire / totals["drafter_messages"]
        if totals["drafter_messages"]
        else None,
        "drafter_bytes_per_step": wire / steps if steps and wire else None,
        "totals": dict(totals),
    }
