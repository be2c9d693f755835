"""The speculation-cache budget sweep behind docs/benchmarks/2026-11-22-pipelining-draft-length.md
(a probe, not part of `tandem bench`: the budget is a server setting, so each budget needs a server
of its own).

    .venv/bin/python -m tandem.benchmarks.cache_budget_sweep

Per budget (outcomes, fanout): one server with the ngram drafter, one Spec-Bench prompt per
category, pipelined and sequential requests alternating on it; prints the cache hit rate and
both speeds.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import yaml

from tandem.benchmarks.launcher import ServiceProcess
from tandem.benchmarks.workload import load_questions, select
from tandem.client import TandemClient

REPO = Path(__file__).resolve().parents[1]
BUDGETS = ((1, 1), (4, 2), (8, 4))


def main() -> None:
    prompts = [q.turns[0] for q in select(load_questions(), per_category=1)]
    base = yaml.safe_load((REPO / "deploy" / "configs" / "local-cpu.yaml").read_text())
    base["speculation"]["drafters"]["derive_layers"] = 0
    base["target"]["engine_args"]["enable_prefix_caching"] = False
    for outcomes, fanout in BUDGETS:
        config = copy.deepcopy(base)
        config["speculation"]["pipeline"] = {"outcomes": outcomes, "fanout": fanout}
        # Both closed on the way out, an error included: no server is left running.
        with (
            ServiceProcess(config) as service,
            TandemClient(service.address, timeout=600) as client,
        ):
            client.generate(prompts[0], max_tokens=32, temperature=0.0)  # warm up
            speed: dict[bool, list[float]] = {True: [], False: []}
            hits = misses = 0
            for i, prompt in enumerate(prompts):
                for pipelined in (True, False) if i % 2 == 0 else (False, True):
                    start = time.perf_counter()
                    result = client.generate(
                        prompt,
                        max_tokens=96,
                        temperature=0.0,
                        speculation="ngram",
                        pipelined=pipelined,
                    )
                    speed[pipelined].append(len(result.token_ids) / (time.perf_counter() - start))
                    if pipelined:
                        hits += result.speculation.cache_hits
                        misses += result.speculation.cache_misses
        on, off = (sum(speed[p]) / len(speed[p]) for p in (True, False))
        print(
            f"outcomes={outcomes} fanout={fanout} hits={hits / (hits + misses):.1%} "
            f"pipelined={on:.2f} sequential={off:.2f} tokens/s ratio={on / off:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
