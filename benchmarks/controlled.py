"""Controlled acceptance: a measurement tool of the bench, not a drafter to serve with.

The drafter proposes the target's known greedy continuation (taken from the baseline's own
outputs in this run), each token corrupted with probability 1 - alpha, at a real compute cost per
drafted token. Whatever a real drafter's quality, this shows how close tandem's pipeline comes to
the ideal speedup E(alpha, k) x cost ratio. Each alpha needs its own server (alpha is a drafter
setting), started through tandem.benchmarks.controlled_source, which registers the source; on
it the controlled drafter runs pipelined (pre-drafting while the target verifies) and
sequentially, prompt by prompt alternating with the in-process baseline, so each alpha has both
and a baseline measured beside them.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tandem.benchmarks import arithmetic, summary
from tandem.benchmarks.records import GenerationParams, RequestRecord
from tandem.benchmarks.systems import Setup, System
from tandem.benchmarks.workload import Prompt

DESCRIPTION = (
    "measurement tool: tandem's gRPC server drafting the target's known greedy output, "
    "corrupted with probability 1 - alpha"
)


def run(
    setup: Setup,
    baseline: System,
    prompts: Sequence[Prompt],
    baseline_records: Sequence[RequestRecord],
    params: GenerationParams,
    alphas: Sequence[float],
    cost_ms: float,
    cost: dict[str, Any],
    warm: Sequence[Prompt],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One entry per alpha: the controlled system's figures against its paired baseline."""
    from tandem.benchmarks.controlled_source import MODE, ControlledSettings, save_continuations
    from tandem.benchmarks.tandem_system import TandemServer, TandemSystem

    k = setup.num_speculative_tokens
    entries = []
    with tempfile.TemporaryDirectory(prefix="tandem-controlled-") as folder:
        path = Path(folder) / "continuations.json"
        save_continuations(
            path,
            [(p.token_ids, r.token_ids) for p, r in zip(prompts, baseline_records, strict=True)],
        )
        for alpha in alphas:
            settings = Path(folder) / f"settings-{alpha}.json"
            ControlledSettings(str(path), alpha, cost_ms).save(settings)
            config = copy.deepcopy(setup.tandem_config)
            config["speculation"]["default_mode"] = MODE
            command = ("tandem.benchmarks.controlled_source", "--settings", str(settings))
            server = TandemServer(config, command=command)
            try:
                systems = [
                    TandemSystem(
                        f"tandem-controlled-{alpha}{'' if pipelined else '-seq'}",
                        None,  # the server's default: the controlled source
                        k,
                        server,
                        pipelined=pipelined,
                    )
                    for pipelined in (True, False)
                ]
                for system in systems:
                    system.warmup(warm, GenerationParams(min(32, params.max_new_tokens)))
                records = _alternate([*systems, baseline], prompts, params, progress)
            finally:
                server.close()
            for system, mine in zip(systems, records, strict=False):
                entries.append(
                    {
                        "pipelined": system.pipelined,
                        **entry(alpha, k, cost_ms, cost, mine, records[-1]),
                    }
                )
    return entries


def _alternate(
    systems: Sequence[System],
    prompts: Sequence[Prompt],
    params: GenerationParams,
    progress: bool,
) -> list[list[RequestRecord]]:
    """Each system's records, the systems taking turns in a rotating order prompt by prompt."""
    records: list[list[RequestRecord]] = [[] for _ in systems]
    order = list(range(len(systems)))
    for i, prompt in enumerate(tqdm(prompts, desc=systems[0].name, disable=not progress)):
        shift = i % len(order)
        for index in order[shift:] + order[:shift]:
            records[index].append(systems[index].run(prompt, params))
    return records


def entry(
    alpha: float,
    k: int,
    cost_ms: float,
    cost: dict[str, Any],
    records: Sequence[RequestRecord],
    baseline: Sequence[RequestRecord],
) -> dict[str, Any]:
    """The figures, plus the ideal for the alpha asked for (E(alpha, k) x cost ratio) and that
    ideal less the drafting a miss leaves on the critical path (the draft-bound ideal)."""
    cost_ratio = cost["cost_ratio"]
    figures = summary.figures(records, {r.question_id: r for r in baseline}, True, k, cost_ratio)
    ideal = arithmetic.ideal_speedup(alpha, k, cost_ratio) if cost_ratio else None
    hits = figures["cache_hit_rate"]
    bound = (
        arithmetic.draft_bound_speedup(
            ideal, cost["t_verify_s"], 1 - (hits or 0.0), k * cost_ms / 1000
        )
        if ideal
        else None
    )
    return {
        "alpha": alpha,
        "k": k,
        "cost_ms_per_draft_token": cost_ms,
        "expected_tokens_per_forward": arithmetic.expected_tokens_per_forward(alpha, k),
        "ideal_speedup": ideal,
        "achieved_fraction": arithmetic.achieved_fraction(figures["speedup"], ideal)
        if ideal
        else None,
        # The ideal models decoding; the end-to-end speedup above also carries each prompt's
        # prefill (TTFT), which speculation cannot shorten. The same fraction for decoding:
        "decode_speedup": figures["decode_speedup"],
        "achieved_fraction_decode": arithmetic.achieved_fraction(figures["decode_speedup"], ideal)
        if ideal and figures["decode_speedup"]
        else None,
        "draft_bound_speedup": bound,
        "achieved_of_bound": arithmetic.achieved_fraction(figures["speedup"], bound)
        if bound
        else None,
        **{
            key: figures[key]
            for key in ("speedup", "mean_accepted_tokens", "acceptance_rate", "cache_hit_rate")
        },
        "baseline_tokens_per_s": arithmetic.mean(
            [arithmetic.tokens_per_s(r.new_tokens, r.wall_s) for r in baseline]
        ),
        "tokens_per_s": figures["tokens_per_s"],
        "mismatches": figures["mismatches"],
        "prompts": figures["prompts"],
    }
