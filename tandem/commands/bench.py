"""`tandem bench`: the command line of the benchmark harness.

    tandem bench --quick --out bench-results
    tandem bench --per-category 3 --max-new-tokens 128 --out bench-results

`--out` receives bench.json, bench.md and bench.png. `--quick` picks small defaults (on
Spec-Bench one prompt from each of its six tasks; 64 new tokens; concurrency 1 and 4) for a run
of a few minutes; explicit options still win over it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULTS = {
    "max_new_tokens": 256,
    "concurrency": [1, 4, 16],
    "concurrency_rounds": 2,
    "per_category": None,
}
QUICK = {"max_new_tokens": 64, "concurrency": [1, 4], "concurrency_rounds": 1, "per_category": 1}
# --quick on Spec-Bench: one prompt from each of its six tasks (MT-bench counted as one).
QUICK_CATEGORIES = ["writing", "translation", "summarization", "qa", "math_reasoning", "rag"]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,N,... got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _alphas(text: str) -> list[float]:
    try:
        values = [float(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A,A,... got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected acceptance rates in [0, 1], got {text!r}")
    return values


def _round_trips(text: str) -> list[float]:
    try:
        values = [float(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MS,MS,... got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected round trips >= 0 ms, got {text!r}")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` on the `tandem` command's subparsers."""
    from tandem.benchmarks.systems import SYSTEMS

    bench = subparsers.add_parser(
        "bench",
        help="benchmark the target, vLLM speculation and tandem side by side (Spec-Bench)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = bench.add_argument
    add("--prompts", help="JSONL of {question_id, category, turns}; default: Spec-Bench's 480")
    add("--categories", type=_names, help="only these categories (comma-separated)")
    add("--per-category", type=_positive, help="the first N prompts of each category")
    add("--limit", type=_positive, help="at most N prompts in all")
    add("--max-new-tokens", type=_positive, help="new tokens per prompt (default 256)")
    add("--temperature", type=float, default=0.0, help="default 0: greedy, as Spec-Bench")
    add("--seed", type=int, default=0)
    add("--no-chat", action="store_true", help="send the first turn as raw text, no template")
    add(
        "--systems",
        type=_names,
        help=f"comma-separated, default all available of: {', '.join(SYSTEMS)}",
    )
    add("--concurrency", type=_counts, help="concurrent streams per level (default 1,4,16)")
    add("--concurrency-rounds", type=_positive, help="requests per stream per level (default 2)")
    add(
        "--num-speculative-tokens",
        type=_positive,
        help="draft length k for every speculative system (default: the config's, 4)",
    )
    add("--ngram-min", type=_positive, help="smallest n-gram, both ngram drafters (config: 1)")
    add("--ngram-max", type=_positive, help="largest n-gram, both ngram drafters (config: 4)")
    add(
        "--layer-groups",
        type=_positive,
        help="EasySpec layer group size of the tandem model drafter (config: 1, sequential)",
    )
    add("--cost-repeats", type=_positive, default=7, help="timed pairs for the cost ratio (7)")
    add(
        "--controlled-acceptance",
        type=_alphas,
        default=[],
        metavar="ALPHAS",
        help="measurement tool, e.g. 0.5,0.7,0.9: per alpha, a server whose drafter proposes "
        "the target's known greedy output corrupted with probability 1 - alpha; reports the "
        "speedup achieved against the ideal for that alpha",
    )
    add(
        "--controlled-cost-ms",
        type=float,
        default=2.0,
        help="measurement tool: compute per token drafted by the controlled drafter (2.0)",
    )
    add(
        "--drafter-link-ms",
        type=_round_trips,
        default=[],
        metavar="MS",
        help="e.g. 0,1,5,20: each drafting tandem system once per round trip, its drafters "
        "behind an emulated link (a relay on their sockets; 0: directly)",
    )
    add(
        "--drafter-link-mbps",
        type=float,
        default=0.0,
        help="the emulated links' rate each way, Mbit/s (default 0: unbounded)",
    )
    add(
        "--eagle-head",
        help="EAGLE-3 head for vllm-eagle3 and tandem-eagle (config: speculation.drafters."
        "eagle_head, by default the one tandem ships for the model)",
    )
    add("--config", help="tandem YAML config: model, engine args, server (default built-in)")
    add("--address", help="use this running tandem server instead of starting one")
    add("--quick", action="store_true", help="a run of minutes: 6 prompts, 64 new tokens")
    add("--out", default="bench-results", help="folder for bench.json, bench.md, bench.png")
    add("--no-progress", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)
    return bench


def _command(args: argparse.Namespace) -> str:
    """The command as typed when it came from the shell; otherwise rebuilt from the options."""
    if sys.argv[1:2] == ["bench"]:
        return shlex.join(["tandem", *sys.argv[1:]])
    parts = ["tandem", "bench"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            parts += [flag, text]
    return shlex.join(parts)


def cmd_bench(args: argparse.Namespace) -> int:
    from tandem.cluster.config.pools import TargetPoolConfig

    # vLLM reads its logging level once, at import: set the target's environment before the
    # config (which checks engine args against vLLM) imports it.
    for key, value in TargetPoolConfig.model_fields["env"].default_factory().items():
        os.environ.setdefault(key, value)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # stdout is for the table; vLLM logs there by default.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

    from tandem.benchmarks import report, runner
    from tandem.benchmarks.records import GenerationParams
    from tandem.benchmarks.shared_config import bench_config
    from tandem.benchmarks.systems import SystemChoiceError
    from tandem.benchmarks.workload import DEFAULT_PROMPTS, WorkloadError
    from tandem.cluster.config.deployment import TandemConfig
    from tandem.speculation.eagle_format import HeadError

    preset = QUICK if args.quick else DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return preset[name] if value is None else value

    config = TandemConfig.from_yaml(args.config) if args.config else TandemConfig()
    config = bench_config(
        config,
        args.num_speculative_tokens,
        args.ngram_min,
        args.ngram_max,
        args.layer_groups,
        args.eagle_head,
    )
    categories = args.categories
    if args.quick and categories is None and args.prompts is None:
        categories = QUICK_CATEGORIES
    options = runner.BenchOptions(
        config=config,
        prompts_file=Path(args.prompts) if args.prompts else DEFAULT_PROMPTS,
        categories=categories,
        per_category=pick("per_category"),
        limit=args.limit,
        chat=not args.no_chat,
        generation=GenerationParams(pick("max_new_tokens"), args.temperature, args.seed),
        systems=args.systems,
        concurrency=pick("concurrency"),
        concurrency_rounds=pick("concurrency_rounds"),
        cost_repeats=args.cost_repeats,
        address=args.address,
        quick=args.quick,
        command=_command(args),
        progress=not args.no_progress,
        controlled_acceptance=args.controlled_acceptance,
        controlled_cost_ms=args.controlled_cost_ms,
        drafter_link_ms=args.drafter_link_ms,
        drafter_link_mbps=args.drafter_link_mbps,
    )
    if args.drafter_link_ms and args.address:
        print("error: --drafter-link-ms starts its own servers; drop --address", file=sys.stderr)
        return 2
    if args.drafter_link_mbps < 0:
        print("error: --drafter-link-mbps must be >= 0", file=sys.stderr)
        return 2
    if args.controlled_acceptance and args.address:
        print(
            "error: --controlled-acceptance starts its own servers; drop --address", file=sys.stderr
        )
        return 2
    try:
        result = runner.run(options)
    except (WorkloadError, SystemChoiceError, HeadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = report.write(result, args.out)
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {result['wall_s']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tandem.commands.bench ...`, the same as `tandem bench ...`."""
    parser = argparse.ArgumentParser(prog="tandem")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
