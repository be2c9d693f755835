"""vLLM's forward inside a Ray actor against the same engine in this process (issue 14).

tandem's target steps vLLM's engine inside a Ray actor; the bench's vllm-target steps the same
engine in the bench's own process, and the bench has seen the actor's forward run 0-10% slower.
Is that Ray's worker process itself (its threads, its environment), or what tandem runs beside
the engine (the event loop streaming outputs, the drafter transport)? This steps the same
`VllmSystem` here, in a bare Ray actor that runs nothing else, and in a bare Ray actor whose
engine carries the target's speculative config (tandem's proposer, never attached, so nothing
drafts), alternating prompt by prompt, and prints each one's forward per engine step and TPOT:

    python -m tandem.benchmarks.engine_floor --per-category 1

`--vllm-ngram` runs vLLM's own ngram speculation in both hosts (this process and a bare Ray
actor): does drafting, with nothing of tandem's in the engine, make the actor's forward slower?

`--neighbour 0.05,0.2` asks the other question: does work on the *other* core slow the forward?
It steps the in-process engine alone and beside a neighbour process that keeps that fraction of
a core busy in short pure-Python bursts (what a coordinator and a client do per streamed token),
alternating prompt by prompt, with no Ray at all.

Run it on an idle machine, like the bench.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

from tandem.benchmarks.records import GenerationParams, RequestRecord
from tandem.benchmarks.workload import Prompt


class EngineHost:
    """A VllmSystem in whatever process holds this object (a Ray actor: see `main`)."""

    def __init__(
        self, name: str, path: str, speculative: bool = False, vllm_ngram: bool = False
    ) -> None:
        from tandem.benchmarks.process_setup import configure_process, engine_cpus
        from tandem.benchmarks.vllm_system import VllmSystem
        from tandem.cluster.config.deployment import TandemConfig
        from tandem.plugins.engine_setup import engine_args

        config = TandemConfig()
        configure_process(config)
        args = dict(config.target.engine_args)
        spec = None
        if speculative:  # the target's speculative config, its proposer never attached
            args = engine_args(path, args, config.speculation)
            spec = args.pop("speculative_config")
            del args["model"]
        elif vllm_ngram:  # the bench's vllm-ngram: the same k and n-gram sizes as tandem's
            spec = {
                "method": "ngram",
                "num_speculative_tokens": config.speculation.num_speculative_tokens,
                "prompt_lookup_min": config.speculation.drafters.ngram_min,
                "prompt_lookup_max": config.speculation.drafters.ngram_max,
            }
        self.system = VllmSystem(name, path, args, spec, cpus=engine_cpus(config))

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord:
        return self.system.run(prompt, params)

    def forward(self) -> tuple[float, int]:
        """Seconds of vLLM's forward so far, and engine steps so far."""
        b = self.system.breakdown()
        return b.forward_s, b.steps


def _neighbour(duty: float, on: Any, stop: Any) -> None:
    """Keep `duty` of a core busy in 1 ms bursts while `on` is set, until `stop` is."""
    burst = 0.001
    while not stop.is_set():
        if not on.wait(0.1):
            continue
        start = time.perf_counter()
        while time.perf_counter() - start < burst:
            pass
        time.sleep(burst * (1 - duty) / duty)


class NeighbourHost:
    """The in-process host, with a busy neighbour process on while it runs a prompt."""

    def __init__(self, host: EngineHost, duty: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.host = host
        self.on, self.stop = context.Event(), context.Event()
        self.process = context.Process(
            target=_neighbour, args=(duty, self.on, self.stop), daemon=True
        )
        self.process.start()

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord:
        self.on.set()
        try:
            return self.host.run(prompt, params)
        finally:
            self.on.clear()

    def forward(self) -> tuple[float, int]:
        return self.host.forward()

    def close(self) -> None:
        self.stop.set()
        self.process.join(timeout=5)


def _prompts(path: str, per_category: int) -> list[Prompt]:
    from transformers import AutoTokenizer

    from tandem.benchmarks.workload import load_questions, render, select

    tokenizer = AutoTokenizer.from_pretrained(path)
    chosen = select(load_questions(), None, per_category, None)
    return [render(q, tokenizer) for q in chosen]


def main(argv: list[str] | None = None) -> int:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--neighbour",
        default="",
        help="comma-separated core fractions: the in-process engine beside a busy process",
    )
    parser.add_argument(
        "--vllm-ngram",
        action="store_true",
        help="vLLM's ngram speculation in this process and in a bare Ray actor",
    )
    args = parser.parse_args(argv)

    from tandem.cluster.config.deployment import TandemConfig
    from tandem.models import resolve_model

    models = TandemConfig().models
    path = str(resolve_model(models.target, models.cache_dir()))
    prompts = _prompts(path, args.per_category)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    in_process = EngineHost("in-process", path, vllm_ngram=args.vllm_ngram)
    hosts: dict[str, Any] = {"in-process": in_process}
    if args.neighbour:
        for duty in (float(d) for d in args.neighbour.split(",")):
            hosts[f"in-process, neighbour {duty:.0%}"] = NeighbourHost(in_process, duty)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=0)(EngineHost)
        hosts["ray-actor"] = remote.remote("ray-actor", path, vllm_ngram=args.vllm_ngram)
        if not args.vllm_ngram:
            hosts["ray-actor-spec"] = remote.remote("ray-actor-spec", path, True)

    def call(name: str, method: str, *args: Any) -> Any:
        host = hosts[name]
        if isinstance(host, ray.actor.ActorHandle):
            return ray.get(getattr(host, method).remote(*args))
        return getattr(host, method)(*args)

    for name in hosts:
        call(name, "run", prompts[0], params)  # warm-up, not counted
    tpot: dict[str, list[float]] = {name: [] for name in hosts}
    spent = {name: [0.0, 0] for name in hosts}  # forward seconds, steps
    names = list(hosts)
    for i, prompt in enumerate(prompts):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            s0, n0 = call(name, "forward")
            record = call(name, "run", prompt, params)
            s1, n1 = call(name, "forward")
            spent[name][0] += s1 - s0
            spent[name][1] += n1 - n0
            if record.tpot_s is not None:
                tpot[name].append(1000 * record.tpot_s)
    forward = {name: 1000 * s / max(1, n) for name, (s, n) in spent.items()}
    print("| engine | forward ms/step | TPOT p50 ms |")
    print("|---|---|---|")
    for name in hosts:
        print(f"| {name} | {forward[name]:.2f} | {statistics.median(tpot[name]):.1f} |")
    print(f"\n{len(prompts)} prompts; forward / in-process forward:")
    for name in hosts:
        print(f"- {name}: {forward[name] / forward['in-process']:.3f}")
    for host in hosts.values():
        if isinstance(host, NeighbourHost):
            host.close()
    if ray.is_initialized():
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
