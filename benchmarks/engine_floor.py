"""vLLM's forward inside a Ray actor against the same engine in this process (issue 14).

tandem's target steps vLLM's engine inside a Ray actor; the bench's vllm-target steps the same
engine in the bench's own process, and the bench has seen the actor's forward run 0-10% slower.
Is that Ray's worker process itself (its threads, its environment), or what tandem runs beside
the engine (the event loop streaming outputs, the drafter transport)? This steps the same
`VllmSystem` here, in a bare Ray actor that runs nothing else, and in a bare Ray actor whose
engine carries the target's speculative config (tandem's proposer, never attached, so nothing
drafts), alternating prompt by prompt, and prints each one's forward per engine step and TPOT:

    python -m tandem.benchmarks.engine_floor --per-category 1

Run it on an idle machine, like the bench.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from tandem.benchmarks.records import GenerationParams, RequestRecord
from tandem.benchmarks.workload import Prompt


class EngineHost:
    """A VllmSystem in whatever process holds this object (a Ray actor: see `main`)."""

    def __init__(self, name: str, path: str, speculative: bool = False) -> None:
        from tandem.benchmarks.runner import configure_process
        from tandem.benchmarks.vllm_system import VllmSystem
        from tandem.cluster.config import TandemConfig
        from tandem.plugins.engine import engine_args

        config = TandemConfig()
        configure_process(config)
        args = dict(config.target.engine_args)
        spec = None
        if speculative:  # the target's speculative config, its proposer never attached
            args = engine_args(path, args, config.speculation)
            spec = args.pop("speculative_config")
            del args["model"]
        self.system = VllmSystem(name, path, args, spec)

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord:
        return self.system.run(prompt, params)

    def forward(self) -> tuple[float, int]:
        """Seconds of vLLM's forward so far, and engine steps so far."""
        b = self.system.breakdown()
        return b.forward_s, b.steps


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
    args = parser.parse_args(argv)

    from tandem.cluster.config import TandemConfig
    from tandem.models import resolve_model

    models = TandemConfig().models
    path = str(resolve_model(models.target, models.cache_dir()))
    prompts = _prompts(path, args.per_category)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    ray.init(include_dashboard=False, log_to_driver=False)
    hosts: dict[str, Any] = {
        "in-process": EngineHost("in-process", path),
        "ray-actor": ray.remote(num_cpus=0)(EngineHost).remote("ray-actor", path),
        "ray-actor-spec": ray.remote(num_cpus=0)(EngineHost).remote("ray-actor-spec", path, True),
    }

    def call(name: str, method: str, *args: Any) -> Any:
        host = hosts[name]
        if name == "in-process":
            return getattr(host, method)(*args)
        return ray.get(getattr(host, method).remote(*args))

    for name in hosts:
        call(name, "run", prompts[0], params)  # warm-up, not counted
    before = {name: call(name, "forward") for name in hosts}
    tpot: dict[str, list[float]] = {name: [] for name in hosts}
    names = list(hosts)
    for i, prompt in enumerate(prompts):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            record = call(name, "run", prompt, params)
            if record.tpot_s is not None:
                tpot[name].append(1000 * record.tpot_s)
    forward = {}
    for name in hosts:
        (s0, n0), (s1, n1) = before[name], call(name, "forward")
        forward[name] = 1000 * (s1 - s0) / max(1, n1 - n0)
    print("| engine | forward ms/step | TPOT p50 ms |")
    print("|---|---|---|")
    for name in hosts:
        print(f"| {name} | {forward[name]:.2f} | {statistics.median(tpot[name]):.1f} |")
    print(f"\n{len(prompts)} prompts; forward / in-process forward:")
    for name in hosts:
        print(f"- {name}: {forward[name] / forward['in-process']:.3f}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
