"""bench.png: speedup over the baseline by category at one stream (left), total tokens/s against
concurrent streams (right); each system one colour in both panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def speedup_and_throughput(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), width_ratios=[2, 1])
    systems = result["systems"]
    colors = {s["name"]: f"C{i}" for i, s in enumerate(systems)}  # the same in both panels
    others = systems[1:] or systems
    categories = [*systems[0]["categories"], "all"]
    width = 0.8 / len(others)
    for i, system in enumerate(others):
        values = [system["categories"][c]["speedup"] for c in categories[:-1]]
        values.append(system["speedup"])
        xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(categories))]
        left.bar(xs, values, width, label=system["name"], color=colors[system["name"]])
    left.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    left.set_xticks(range(len(categories)), categories, rotation=45, ha="right")
    left.set_ylabel(f"speedup over {result['baseline']} (mean tokens/s)")
    left.set_title("Speedup by category, batch 1")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, fontsize=8)

    for name in dict.fromkeys(c["system"] for c in result["concurrency"]):
        points = [c for c in result["concurrency"] if c["system"] == name]
        right.plot(
            [c["concurrency"] for c in points],
            [c["tokens_per_s"] for c in points],
            marker="o",
            label=name,
            color=colors.get(name),
        )
    right.set_xscale("log", base=2)
    levels = sorted({c["concurrency"] for c in result["concurrency"]})
    right.set_xticks(levels, [str(level) for level in levels])
    right.minorticks_off()
    right.set_xlabel("concurrent streams")
    right.set_ylabel("total output tokens/s")
    right.set_title("Throughput against concurrency")
    if result["concurrency"]:
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)
    fig.suptitle(f"tandem bench {result['created_utc']} - {result['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
