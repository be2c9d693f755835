"""The order of work: build the systems, warm them, then measure them side by side.

Systems alternate prompt by prompt (with the order rotated each prompt), so slow drift of a
shared machine hits every system alike and their ratios survive it. Only one engine works at a
time: the others wait idle in this process or in the server's.
"""

from __future__ import annotations

import datetime
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from tandem.benchmarks import controlled, costs, machine, summary
from tandem.benchmarks.process_setup import configure_process, engine_cpus
from tandem.benchmarks.records import ConcurrencyRun, GenerationParams, RequestRecord
from tandem.benchmarks.shared_config import draft_model_path, eagle_head_path, server_config
from tandem.benchmarks.systems import (
    BASELINE,
    SERVED,
    TANDEM_MODES,
    Builder,
    Setup,
    System,
    choose,
    server_key,
    unlinked,
    with_links,
)
from tandem.benchmarks.workload import (
    DEFAULT_PROMPTS,
    Prompt,
    Question,
    WorkloadError,
    fitting,
    load_questions,
    render,
    select,
)

SCHEMA = "tandem-bench/1"
T = TypeVar("T")
WARMUP = Question("warmup", "warmup", ("Repeat this sentence three times: the quick brown fox.",))


@dataclass
class BenchOptions:
    config: Any  # TandemConfig: the model, engine args and server every system shares
    prompts_file: Path = DEFAULT_PROMPTS
    categories: list[str] | None = None
    per_category: int | None = None
    limit: int | None = None
    chat: bool = True
    generation: GenerationParams = field(default_factory=GenerationParams)
    systems: list[str] | None = None
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    concurrency_rounds: int = 2
    cost_repeats: int = 7
    address: str | None = None
    quick: bool = False
    command: str = ""
    progress: bool = True
    # Measurement tool: the alphas of the controlled-acceptance runs (none: not run).
    controlled_acceptance: list[float] = field(default_factory=list)
    controlled_cost_ms: float = 2.0  # compute per drafted token of the controlled drafter
    # Round trips of the emulated links the tandem systems' drafters sit behind, one system
    # each (0: the plain system); and the links' rate (0: unbounded).
    drafter_link_ms: list[float] = field(default_factory=list)
    drafter_link_mbps: float = 0.0


def build_order(names: Sequence[str]) -> list[str]:
    """In-process engines first, vllm-ngram last of them: its drafter imports numba, and vLLM
    0.32 (CPU) fails to build any later engine in the same process (its Triton-override scan of
    every loaded module trips over llvmlite's function wrappers: "'_lib_fn_wrapper' object has
    no attribute 'get'"). Then vLLM's servers (processes of their own), tandem systems last:
    they wait for the server."""
    return sorted(
        names,
        key=lambda name: (unlinked(name)[0] in TANDEM_MODES, name in SERVED, name == "vllm-ngram"),
    )


def _rotated(names: Sequence[str], i: int) -> list[str]:
    shift = i % len(names)
    return [*names[shift:], *names[:shift]]


def _log(message: str) -> None:
    tqdm.write(f"[bench] {message}", file=sys.stderr)


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the whole benchmark and return the report's data (see report.py for the files)."""
    started = time.perf_counter()
    threads = configure_process(options.config)
    host = machine.describe()
    config = options.config
    from transformers import AutoTokenizer

    from tandem.models import resolve_model

    model_path = str(resolve_model(config.models.target, config.models.cache_dir()))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    chosen = select(
        load_questions(options.prompts_file),
        options.categories,
        options.per_category,
        options.limit,
    )
    prompts = [render(q, tokenizer, options.chat) for q in chosen]
    spec = config.speculation
    head = eagle_head_path(config, model_path)
    setup = Setup(
        model_path=model_path,
        engine_args=dict(config.target.engine_args),
        tandem_config=server_config(config),
        modes=tuple(m for m in spec.modes() if m != "eagle" or head is not None),
        draft_model_path=draft_model_path(config, model_path),
        eagle_head_path=head,
        num_speculative_tokens=spec.num_speculative_tokens,
        ngram_min=spec.drafters.ngram_min,
        ngram_max=spec.drafters.ngram_max,
        address=options.address,
        threads=threads,
        engine_cpus=engine_cpus(config),
        link_mbps=options.drafter_link_mbps,
    )
    params = options.generation
    builder = Builder(setup)
    systems: dict[str, System] = {}
    try:
        absent = builder.absent()
        links = options.drafter_link_ms
        names = with_links(choose(options.systems, absent), links, options.drafter_link_mbps)
        # First, alone on the machine: the cost ratio is a timing like any other.
        _log("measuring the cost of a verification step")
        cost, max_len = _cost(setup, prompts, params, options.cost_repeats)
        prompts, dropped = fitting(prompts, max_len, params.max_new_tokens)
        if not prompts:
            raise WorkloadError(
                f"no prompt leaves room for {params.max_new_tokens} new tokens in the context "
                f"of {max_len}"
            )
        tandem = [server_key(name) for name in names if unlinked(name)[0] in TANDEM_MODES]
        if tandem:
            _log(f"starting tandem servers {', '.join(dict.fromkeys(tandem))} (in the background)")
            builder.start_servers(tandem)
        for name in build_order(names):
            _log(f"starting {name}")
            systems[name] = builder.build(name)
        warm = [render(WARMUP, tokenizer, options.chat)]
        warm_params = GenerationParams(min(32, params.max_new_tokens), params.temperature, 0)
        for name in names:
            _log(f"warming up {name}")
            systems[name].warmup(warm, warm_params)
        breakdowns = Breakdowns()
        records = _per_prompt(systems, names, prompts, params, options.progress, breakdowns)
        host["load_average_after_batch1"] = _load()
        runs = _concurrency(systems, names, prompts, params, options, breakdowns)
        infos = {n: _info(systems[n]) for n in names}
        builder.close()  # the servers' memory, before the controlled runs start theirs
        controlled_runs = []
        if options.controlled_acceptance:
            _log("controlled acceptance (measurement tool)")
            controlled_runs = controlled.run(
                setup,
                systems[BASELINE],
                prompts,
                records[BASELINE],
                params,
                options.controlled_acceptance,
                options.controlled_cost_ms,
                cost,
                warm,
                options.progress,
            )
    finally:
        for system in systems.values():
            system.close()
        builder.close()

    ratio = cost["cost_ratio"]
    # Another load on the machine during the run shows here (the 1-minute figure).
    host["load_average_at_end"] = _load()
    return {
        "schema": SCHEMA,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": options.command,
        "machine": host,
        "threads_per_engine": threads,
        "config": _config(options, setup, threads),
        "workload": {
            "source": str(options.prompts_file),
            "turn": "first",
            "chat_template": options.chat,
            "prompts": len(prompts),
            "categories": {c: sum(p.category == c for p in prompts) for c in _cats(prompts)},
            "dropped_too_long": [p.question_id for p in dropped],
        },
        "baseline": BASELINE,
        "systems": [
            summary.system_entry(infos[n], records[n], records[BASELINE], ratio) for n in names
        ],
        "absent_systems": [{"name": n, "reason": r} for n, r in absent.items()],
        "cost": cost,
        "concurrency": _concurrency_entries(names, runs, records, options.concurrency),
        "breakdown": breakdowns.entries(names, records, runs),
        "controlled_acceptance": controlled_runs,
        "records": [_record_row(r) for n in names for r in records[n]],
        "wall_s": time.perf_counter() - started,
    }


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cats(prompts: Sequence[Prompt]) -> list[str]:
    return list(dict.fromkeys(p.category for p in prompts))


def _info(system: System) -> dict[str, Any]:
    return {
        **system.info(),
        "speculative": system.speculative,
        "num_speculative_tokens": system.num_speculative_tokens,
    }


class Breakdowns:
    """Each system's serving breakdown by concurrency level: the difference of its counters
    (System.breakdown) around each of its runs, summed. Systems without timers have none."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int], Any] = {}

    def measure(self, name: str, level: int, system: System, run: Callable[[], T]) -> T:
        before = system.breakdown()
        result = run()
        if before is not None:
            delta = system.breakdown() - before
            key = (name, level)
            self.sums[key] = self.sums[key] + delta if key in self.sums else delta
        return result

    def entries(
        self,
        names: list[str],
        records: dict[str, list[RequestRecord]],
        runs: list[ConcurrencyRun],
    ) -> list[dict[str, Any]]:
        tpots = {(name, 1): records[name] for name in names}
        tpots.update({(r.system, r.concurrency): r.requests for r in runs})
        return [
            summary.breakdown_entry(name, level, asdict(total), tpots.get((name, level), []))
            for (name, level), total in sorted(
                self.sums.items(), key=lambda item: (item[0][1], names.index(item[0][0]))
            )
        ]


def _per_prompt(
    systems: dict[str, System],
    names: list[str],
    prompts: list[Prompt],
    params: GenerationParams,
    progress: bool,
    breakdowns: Breakdowns,
) -> dict[str, list[RequestRecord]]:
    records: dict[str, list[RequestRecord]] = {n: [] for n in names}
    with tqdm(
        total=len(prompts) * len(names), desc="prompts", unit="run", disable=not progress
    ) as bar:
        for i, prompt in enumerate(prompts):
            for name in _rotated(names, i):
                bar.set_postfix_str(f"{prompt.category} {prompt.question_id} {name}")
                system = systems[name]
                run = functools.partial(system.run, prompt, params)
                records[name].append(breakdowns.measure(name, 1, system, run))
                bar.update()
    return records


def _cost(
    setup: Setup, prompts: list[Prompt], params: GenerationParams, repeats: int
) -> tuple[dict[str, Any], int]:
    """The cost ratio, on an engine of its own: the target with prefix caching on (the
    measured engines have it off). Built and dropped before the others, since none can be built
    after vllm-ngram (see build_order). Also returns the target's context length."""
    import gc

    from tandem.benchmarks.vllm_system import VllmSystem

    args = {**setup.engine_args, "enable_prefix_caching": True}
    engine = VllmSystem(
        "cost", setup.model_path, args, None, "prefix-cached target", setup.engine_cpus
    )
    try:
        max_len = engine.engine.vllm_config.model_config.max_model_len
        fit = fitting(prompts, max_len, params.max_new_tokens)[0] or prompts
        length = costs.context_length(
            [len(p.token_ids) for p in fit], params.max_new_tokens, engine.block_size
        )
        context = costs.context_tokens([p.token_ids for p in fit], length)
        result = costs.measure(engine.forward_once, context, setup.num_speculative_tokens, repeats)
    finally:
        engine.close()
        del engine
        gc.collect()
    return result, max_len


def _concurrency(
    systems: dict[str, System],
    names: list[str],
    prompts: list[Prompt],
    params: GenerationParams,
    options: BenchOptions,
    breakdowns: Breakdowns,
) -> list[ConcurrencyRun]:
    """Each level above 1: `level` streams at once over level x rounds prompts. Level 1 is not
    run again: the batch-1 runs above are exactly one stream at a time (see batch1_run)."""
    runs = []
    levels = [level for level in options.concurrency if level > 1]
    with tqdm(
        total=len(levels) * len(names), desc="concurrency", unit="run", disable=not options.progress
    ) as bar:
        for i, level in enumerate(levels):
            count = level * options.concurrency_rounds
            batch = [prompts[j % len(prompts)] for j in range(count)]
            for name in _rotated(names, i):
                bar.set_postfix_str(f"{level} streams {name}")
                system = systems[name]
                run = functools.partial(system.run_concurrent, batch, level, params)
                runs.append(breakdowns.measure(name, level, system, run))
                bar.update()
    return runs


def batch1_run(name: str, records: list[RequestRecord]) -> ConcurrencyRun:
    """The batch-1 runs of a system as its concurrency-1 level: one stream, back to back."""
    return ConcurrencyRun(name, 1, sum(r.wall_s for r in records), records)


def _concurrency_entries(
    names: list[str],
    runs: list[ConcurrencyRun],
    records: dict[str, list[RequestRecord]],
    levels: list[int],
) -> list[dict[str, Any]]:
    if 1 in levels:
        runs = [batch1_run(n, records[n]) for n in names] + runs
    by_id = {r.question_id: r for r in records[BASELINE]}
    base = {r.concurrency: r for r in runs if r.system == BASELINE}
    ordered = sorted(runs, key=lambda r: (r.concurrency, names.index(r.system)))
    return [summary.concurrency_entry(r, base.get(r.concurrency), by_id) for r in ordered]


def _record_row(record: RequestRecord) -> dict[str, Any]:
    row = asdict(record)
    row["new_tokens"] = record.new_tokens
    del row["token_ids"]
    return row


def _config(options: BenchOptions, setup: Setup, threads: int) -> dict[str, Any]:
    config = options.config
    return {
        "model": config.models.target,
        "model_path": setup.model_path,
        "draft_model_path": setup.draft_model_path,
        "eagle_head_path": setup.eagle_head_path,
        "engine_args": setup.engine_args,
        "target_env": dict(config.target.env),
        "threads_per_engine": threads,
        "generation": asdict(options.generation),
        "categories": options.categories,
        "per_category": options.per_category,
        "limit": options.limit,
        "systems": options.systems,
        "concurrency": options.concurrency,
        "concurrency_rounds": options.concurrency_rounds,
        "speculation": {
            "num_speculative_tokens": setup.num_speculative_tokens,
            "ngram_min": setup.ngram_min,
            "ngram_max": setup.ngram_max,
            "tandem_modes": list(setup.modes),
            "tandem": config.speculation.model_dump(mode="json"),
        },
        "cost_repeats": options.cost_repeats,
        "controlled_acceptance": options.controlled_acceptance,
        "controlled_cost_ms": options.controlled_cost_ms,
        "address": options.address,
        "quick": options.quick,
    }
