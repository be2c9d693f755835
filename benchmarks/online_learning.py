"""Online learning of the EAGLE-3 head through the service: frozen against online, one stream.

    python -m tandem.benchmarks.online_learning --out benchmarks/results/DATE-online-learning

The same stream of greedy requests in mode eagle goes to two services started one after the
other, the default config with `speculation.drafters.online` off (the frozen head) and on (with
this run's learning settings): per domain (benchmarks/online_prompts.py: coding, then cooking),
16 requests the drafter learns from, then 8 unseen prompts of that domain. Each request's
accepted tokens per drafted token is its window; the plot draws them (and a moving mean) in
stream order, frozen against online. Printed and written (OUT.json, OUT.png): acceptance and
tokens/s per phase and system, outputs compared token for token (both must equal the target's,
so they must equal each other), the drafter's learning figures from GetStats (head version,
updates kept and rolled back, time on the core, its longest slice), the drafter round trip,
and the drafter process's resident memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from tandem.benchmarks.launcher import ServiceProcess
from tandem.benchmarks.online_prompts import DOMAINS
from tandem.client import TandemClient


def run_stream(config: dict[str, Any], max_tokens: int, settle_s: float) -> dict[str, Any]:
    """Serve the whole stream on a service of `config`; per request its figures."""
    service = ServiceProcess(config, startup_timeout_s=600)
    service.start()
    records = []
    try:
        with TandemClient(service.address, timeout=600) as client:
            client.generate("Hello", temperature=0, max_tokens=8, speculation="eagle")  # warm
            memory = {"start": drafter_rss(service)}
            for domain, (learn, unseen) in DOMAINS.items():
                for phase, prompts in (("learn", learn), ("unseen", unseen)):
                    if phase == "unseen" and settle_s:
                        time.sleep(settle_s)  # the drafter idle: learning has the core
                    for prompt in prompts:
                        records.append(one(client, prompt, max_tokens, domain, phase))
            stats = client.stats()
            memory["end"] = drafter_rss(service)
    finally:
        service.stop()
    drafter = stats.drafters[0]
    learning = {
        name: getattr(drafter, name)
        for name in (
            "head_version",
            "head_updates_kept",
            "head_updates_rolled_back",
            "head_window_acceptance",
            "head_candidate_acceptance",
            "head_buffer_tokens",
            "head_learn_s",
            "head_slice_max_s",
        )
    }
    return {
        "records": records,
        "learning": learning,
        "drafter_rtt_mean_s": stats.drafter_rtt_mean_s,
        "drafter_rss_mb": memory,
    }


def one(client: TandemClient, prompt: str, max_tokens: int, domain: str, phase: str) -> dict:
    started = time.perf_counter()
    result = client.generate(prompt, temperature=0, max_tokens=max_tokens, speculation="eagle")
    wall = time.perf_counter() - started
    spec = result.speculation
    return {
        "domain": domain,
        "phase": phase,
        "prompt": prompt,
        "tokens": list(result.token_ids),
        "wall_s": wall,
        "drafted": spec.draft_tokens,
        "accepted": spec.accepted_tokens,
        "drafter": client.stats().drafters[0].head_version,
    }


def drafter_rss(service: ServiceProcess) -> float:
    """The drafter replica's resident memory (MB): Ray's worker whose command names it."""
    for process in psutil.Process(service.proc.pid).children(recursive=True):
        try:
            if "DrafterReplica" in " ".join(process.cmdline()):
                return process.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return 0.0


def phases(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per domain and phase: accepted per drafted, tokens per second."""
    out = {}
    for key in dict.fromkeys((r["domain"], r["phase"]) for r in records):
        chosen = [r for r in records if (r["domain"], r["phase"]) == key]
        drafted = sum(r["drafted"] for r in chosen)
        out["/".join(key)] = {
            "accepted_per_drafted": sum(r["accepted"] for r in chosen) / max(1, drafted),
            "tokens_per_s": sum(len(r["tokens"]) for r in chosen)
            / sum(r["wall_s"] for r in chosen),
        }
    return out


def plot(results: dict[str, dict], path: Path, window: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, result in results.items():
        rates = [r["accepted"] / max(1, r["drafted"]) for r in result["records"]]
        (line,) = ax.plot(rates, marker=".", linestyle="", alpha=0.5)
        mean = [statistics.mean(rates[max(0, i - window + 1) : i + 1]) for i in range(len(rates))]
        ax.plot(mean, color=line.get_color(), label=f"{name} (mean of {window})")
    records = next(iter(results.values()))["records"]
    for i in range(1, len(records)):
        previous, current = records[i - 1], records[i]
        if (previous["domain"], previous["phase"]) != (current["domain"], current["phase"]):
            ax.axvline(i - 0.5, color="grey", linewidth=0.8)
            ax.text(i, ax.get_ylim()[1] * 0.97, f"{current['domain']} {current['phase']}", size=8)
    ax.set_xlabel("request, in stream order")
    ax.set_ylabel("accepted / drafted tokens")
    ax.set_title("EAGLE-3 head: frozen vs learning online (greedy, mode eagle)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="OUT.json and OUT.png are written")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--settle-s", type=float, default=0.0, help="idle before unseen prompts")
    parser.add_argument(
        "--online", default="{}", help="JSON: speculation.drafters.online settings beyond enabled"
    )
    args = parser.parse_args()
    online = {"enabled": True, **json.loads(args.online)}
    systems = {
        "frozen": {},
        "online": {"speculation": {"drafters": {"online": online}}},
    }
    results = {name: run_stream(c, args.max_tokens, args.settle_s) for name, c in systems.items()}
    frozen, learned = (results[n]["records"] for n in systems)
    summary = {
        "online_settings": online,
        "outputs_identical": all(
            a["tokens"] == b["tokens"] for a, b in zip(frozen, learned, strict=True)
        ),
        "phases": {name: phases(r["records"]) for name, r in results.items()},
        **{name: {k: v for k, v in r.items() if k != "records"} for name, r in results.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**summary, "runs": results}, indent=1))
    plot(results, out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
