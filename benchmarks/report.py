"""The files a run leaves in --out: bench.json (every figure), bench.md (the tables: this
module), bench.png (plot.py) and, with links, bench-links.png (link_report.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.benchmarks import link_report, plot

JSON_NAME, MARKDOWN_NAME, PNG_NAME = "bench.json", "bench.md", "bench.png"


def write(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME, "png": out / PNG_NAME}
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(result) + link_report.markdown(result))
    plot.speedup_and_throughput(result, paths["png"])
    paths.update(link_report.plot(result, out))
    return paths


# ---- Markdown -------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(spread: dict[str, float] | None) -> str:
    if not spread:
        return "-"
    return f"{spread['p50'] * 1e3:.1f} / {spread['p90'] * 1e3:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _loads(values: list[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.1f}" for v in values)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ideal(entry: dict[str, Any], key: str, fmt: Callable[[float | None], str]) -> str:
    return fmt(entry["ideal"][key]) if entry.get("ideal") else "-"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    work = result["workload"]
    gen = result["config"]["generation"]
    lines = [
        "# tandem bench",
        "",
        f"- date: {result['created_utc']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"{result['threads_per_engine']} thread(s) per engine",
        f"- model: {result['config']['model']}; {work['prompts']} prompts "
        f"({len(work['categories'])} categories), first turn, up to {gen['max_new_tokens']} new "
        f"tokens, temperature {gen['temperature']}",
        f"- command: `{result['command']}`",
        f"- load average (1, 5, 15 min) at start {_loads(m.get('load_average_at_start'))}, "
        f"at end {_loads(m.get('load_average_at_end'))}",
        f"- baseline: {result['baseline']}; ratios are measured side by side in this one run, "
        "systems alternating prompt by prompt",
        *_sampling_note(gen),
        "",
        "## Batch 1, per system",
        "",
    ]
    rows = [
        [
            s["name"],
            _num(s["tokens_per_s"]),
            _num(s["speedup"]),
            _num(s["speedup_median"]),
            _num(s["mean_accepted_tokens"]),
            _pct(s["acceptance_rate"]),
            _pct(s.get("cache_hit_rate")),
            _ms(s["ttft_s"]),
            _ms(s["tpot_s"]),
            str(s["mismatches"]),
            _ideal(s, "ideal_speedup", _num),
            _ideal(s, "achieved_fraction", _pct),
        ]
        for s in result["systems"]
    ]
    lines += _table(
        [
            "system",
            "tokens/s",
            "speedup (mean)",
            "speedup (median)",
            "tokens/forward",
            "acceptance",
            "cache hits",
            "TTFT p50 / p90 ms",
            "TPOT p50 / p90 ms",
            "mismatches",
            "ideal speedup",
            "achieved",
        ],
        rows,
    )
    lines += ["", "## Speedup by category (ratio of mean tokens/s; baseline tokens/s)", ""]
    systems = result["systems"]
    base = systems[0]
    rows = []
    for category, figures in base["categories"].items():
        row = [category, str(figures["prompts"]), _num(figures["tokens_per_s"])]
        row += [_num(s["categories"][category]["speedup"]) for s in systems[1:]]
        rows.append(row)
    lines += _table(
        ["category", "prompts", f"{base['name']} tokens/s"] + [s["name"] for s in systems[1:]], rows
    )
    if result["concurrency"]:
        lines += ["", "## Concurrency", ""]
        rows = [
            [
                c["system"],
                str(c["concurrency"]),
                str(c["requests"]),
                _num(c["tokens_per_s"]),
                _num(c["speedup"]),
                _ms(c["latency_s"]),
                _ms(c["ttft_s"]),
                str(c["mismatches_vs_batch1_baseline"]),
            ]
            for c in result["concurrency"]
        ]
        lines += _table(
            [
                "system",
                "streams",
                "requests",
                "total tokens/s",
                "vs baseline",
                "latency p50 / p90 ms",
                "TTFT p50 / p90 ms",
                "differs from batch 1",
            ],
            rows,
        )
    lines += breakdown_section(result)
    lines += drafters_by_category(result)
    lines += controlled_section(result)
    cost = result["cost"]
    lines += [
        "",
        "## Cost of a verification step",
        "",
        f"vLLM, {cost['context_tokens']} cached context tokens: 1-token step "
        f"{cost['t_one_token_s'] * 1e3:.1f} ms, {cost['verify_tokens']}-token step "
        f"{cost['t_verify_s'] * 1e3:.1f} ms (medians of {cost['repeats']}); cost ratio "
        f"{_num(cost['cost_ratio'], 3)}. Ideal speedup = E(alpha, k) x cost ratio, with "
        "E = (1 - alpha^(k+1)) / (1 - alpha); drafting is taken as free.",
        "",
        "Absent (not faked): "
        + "; ".join(f"{a['name']} ({a['reason']})" for a in result["absent_systems"]),
        "",
        "## Definitions",
        "",
        "- tokens/s: new tokens / wall time per prompt, averaged over prompts (Spec-Bench).",
        "- speedup (mean): mean tokens/s over the baseline's; (median): the median of the "
        "per-prompt ratios.",
        "- tokens/forward: new tokens per target forward pass (engine step), the bonus token "
        "included; acceptance: accepted / drafted tokens.",
        "- TTFT, TPOT: from the caller's side (tandem: the gRPC client), TPOT the mean gap "
        "between later tokens; p50 / p90 over prompts.",
        "- ideal speedup: E(alpha, k) x cost ratio with the system's alpha and k; achieved: "
        "speedup (mean) / ideal. E assumes independent acceptances; accepted runs make the "
        "measured tokens/forward exceed it (achieved > 100%); the JSON also gives the ideal "
        "with the measured tokens/forward.",
        "- concurrency 1 is the batch-1 runs above (one stream, back to back); higher levels "
        "run N streams at once, each taking the next prompt when one ends.",
        "",
    ]
    return "\n".join(lines)


def breakdown_section(result: dict[str, Any]) -> list[str]:
    """Where each system's time goes, per engine step, from the servers' own timers (tandem's
    GetStats breakdown; the same timers on the in-process vLLM engines)."""
    entries = result.get("breakdown") or []
    if not entries:
        return []
    lines = [
        "",
        "## Where the time goes (ms per engine step, servers' own timers)",
        "",
        "vLLM's step = schedule + forward (and sampling) + proposer + output (scheduler update, "
        "detokenization); the proposer's time includes its drafter round trips (RTT) and its "
        "waits for pre-drafts. Between: the engine thread from one step to the next, of which "
        "hand-off: its sending the step's outputs. Stream (the output socket to the "
        "coordinator) and coordinator are latencies on the way out, summed over a step's "
        "outputs. Engine per "
        "token = (step + between) / tokens per step: at 1 stream, a client's TPOT above it is "
        "time lost on the way out. vLLM's servers have no timers inside (client figures only).",
        "",
    ]
    rows = []
    for e in entries:
        ms = e["ms_per_step"]
        rows.append(
            [
                e["system"],
                str(e["concurrency"]),
                _ms(e["client_tpot_s"]),
                _num(e["engine_ms_per_token"], 1),
                _num(e["tokens_per_step"]),
                *(_num(ms[part], 2) for part in STEP_COLUMNS),
                _num(e["drafter_rtt_mean_ms"], 2),
                _pct(e["drafter_rtt_of_step"]),
                _num(e["drafter_bytes_per_step"], 0),
            ]
        )
    return lines + _table(
        [
            "system",
            "streams",
            "TPOT p50 / p90 ms (client)",
            "engine ms/token",
            "tokens/step",
            "step",
            "schedule",
            "forward",
            "proposer",
            "of which RTT",
            "pre-draft wait",
            "output",
            "between",
            "hand-off",
            "stream",
            "coordinator",
            "RTT per round trip",
            "RTT / step",
            "drafter bytes/step",
        ],
        rows,
    )


STEP_COLUMNS = (
    "step",
    "schedule",
    "forward",
    "proposer",
    "drafter_rtt",
    "predraft_wait",
    "output",
    "between_steps",
    "handoff",
    "stream",
    "coordinator",
)


def _sampling_note(gen: dict[str, Any]) -> list[str]:
    """At temperature > 0: what vLLM's in-process speculation figures are worth, and what the
    mismatches count."""
    if not gen["temperature"]:
        return []
    return [
        f"- sampling (temperature {gen['temperature']}, seed {gen['seed']}): tandem's systems "
        "verify drafts with tandem's exact sampler; vLLM's in-process speculation (vllm-ngram, "
        "vllm-draft-model) with vLLM 0.32's own rejection sampler, which is NOT exact for "
        "sampled requests on the CPU (docs/known-vllm-issues.md): its figures are not a "
        "baseline to beat. A seed gives the same tokens with and without tandem's drafts, so "
        "mismatches count outputs that left the target's seeded tokens."
    ]


NGRAM_REFERENCE = "vllm-ngram"


def drafters_by_category(result: dict[str, Any]) -> list[str]:
    """One table per speculative system: per category, alpha, tokens per round (per target
    forward, the bonus token included), speedup over the target alone and over vLLM's ngram."""
    systems = [s for s in result["systems"] if s.get("speculative")]
    if not systems:
        return []
    ngram = next((s for s in result["systems"] if s["name"] == NGRAM_REFERENCE), None)
    lines = ["", "## Drafters by category", ""]
    lines.append(
        f"Speedups are ratios of mean tokens/s measured side by side; vs {NGRAM_REFERENCE}: "
        "over vLLM's in-process ngram drafter on the same prompts."
    )
    for system in systems:
        rows = []
        pairs = [
            (c, f, ngram["categories"].get(c) if ngram else None)
            for c, f in system["categories"].items()
        ]
        pairs.append(("all", system, ngram))
        for category, figures, reference in pairs:
            versus = figures["speedup"] / reference["speedup"] if reference else None
            rows.append(
                [
                    category,
                    _pct(figures["acceptance_rate"]),
                    _num(figures["mean_accepted_tokens"]),
                    _num(figures["speedup"]),
                    _num(versus),
                    _by_source(figures.get("sources") or {}),
                ]
            )
        lines += ["", f"### {system['name']}", ""]
        lines += _table(
            [
                "category",
                "alpha",
                "tokens/round",
                "vs target alone",
                f"vs {NGRAM_REFERENCE}",
                "drafted by source (alpha)",
            ],
            rows,
        )
    return lines


def _by_source(sources: dict[str, Any]) -> str:
    """Each source's share of the drafted tokens and its acceptance, largest share first."""
    total = sum(s["draft_tokens"] for s in sources.values())
    if not total:
        return "-"
    ranked = sorted(sources.items(), key=lambda item: -item[1]["draft_tokens"])
    return ", ".join(
        f"{name} {s['draft_tokens'] / total:.0%} ({_pct(s['acceptance_rate'])})"
        for name, s in ranked
        if s["draft_tokens"]
    )


def controlled_section(result: dict[str, Any]) -> list[str]:
    entries = result.get("controlled_acceptance") or []
    if not entries:
        return []
    lines = [
        "",
        "## Controlled acceptance (measurement tool, not a drafter)",
        "",
        "The drafter proposes the target's known greedy output, each token replaced with "
        f"probability 1 - alpha, at {entries[0]['cost_ms_per_draft_token']} ms of real compute "
        "per drafted token; each alpha ran on its own server, pipelined and sequential drafting "
        "alternating prompt by prompt with a fresh run of the baseline. Ideal = E(alpha, k) x "
        "cost ratio (drafting free). Decode: the same from 1 / TPOT, without the prefill "
        "(TTFT) that speculation cannot shorten. Draft-bound = that ideal with a k-token "
        "draft on the critical path of every step that missed the speculation cache (every "
        "step, when sequential): what pipelining at this hit rate could reach if round trips "
        "and every other overhead were free.",
        "",
    ]
    rows = [
        [
            _num(e["alpha"]),
            "pipelined" if e.get("pipelined", True) else "sequential",
            _pct(e.get("cache_hit_rate")),
            str(e["k"]),
            _pct(e["acceptance_rate"]),
            _num(e["mean_accepted_tokens"]),
            _num(e["expected_tokens_per_forward"]),
            _num(e["speedup"]),
            _num(e["ideal_speedup"]),
            _pct(e["achieved_fraction"]),
            _num(e.get("decode_speedup")),
            _pct(e.get("achieved_fraction_decode")),
            _num(e.get("draft_bound_speedup")),
            _pct(e.get("achieved_of_bound")),
            str(e["mismatches"]),
        ]
        for e in entries
    ]
    return lines + _table(
        [
            "alpha",
            "drafting",
            "cache hits",
            "k",
            "accepted / drafted",
            "tokens/round",
            "E(alpha, k)",
            "speedup",
            "ideal speedup",
            "achieved",
            "decode speedup",
            "achieved (decode)",
            "draft-bound speedup",
            "achieved of draft-bound",
            "mismatches",
        ],
        rows,
    )
