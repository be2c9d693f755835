"""What distance costs: the speedup of each tandem system against its drafters' round trip, from
a run with --drafter-link-ms (systems named <system>@<rtt>ms; the plain name is the same-node
system, a round trip of about a millisecond on loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem.benchmarks.systems import unlinked

PNG_NAME = "bench-links.png"


def speedups(result: dict[str, Any]) -> dict[str, dict[int, dict[float, float]]]:
    """Per plain system that ran behind a link: per concurrency (1 = the batch-1 run), per
    round trip (0.0 = directly), its speedup over the baseline."""
    linked = {
        unlinked(s["name"])[0] for s in result["systems"] if unlinked(s["name"])[1] is not None
    }
    out: dict[str, dict[int, dict[float, float]]] = {}
    for system in result["systems"]:
        plain, rtt = unlinked(system["name"])
        if plain in linked and system.get("speedup") is not None:
            out.setdefault(plain, {}).setdefault(1, {})[rtt or 0.0] = system["speedup"]
    for level in result["concurrency"]:
        plain, rtt = unlinked(level["system"])
        if plain in linked and level.get("speedup") is not None and level["concurrency"] > 1:
            per_rtt = out.setdefault(plain, {}).setdefault(level["concurrency"], {})
            per_rtt[rtt or 0.0] = level["speedup"]
    return out


def markdown(result: dict[str, Any]) -> str:
    """A table per system: speedup per round trip and concurrency, and the share of the
    same-node speedup kept ("" without links)."""
    table = speedups(result)
    if not table:
        return ""
    lines = ["", "## Drafters behind a link (speedup over the baseline; kept: of same-node)", ""]
    for plain, levels in table.items():
        rtts = sorted({rtt for per_rtt in levels.values() for rtt in per_rtt})
        lines.append(f"| {plain} | " + " | ".join(f"{rtt:g} ms" for rtt in rtts) + " |")
        lines.append("|---" * (len(rtts) + 1) + "|")
        for concurrency, per_rtt in sorted(levels.items()):
            near = per_rtt.get(0.0)
            cells = []
            for rtt in rtts:
                value = per_rtt.get(rtt)
                kept = f" ({value / near:.0%})" if value is not None and near and rtt else ""
                cells.append("-" if value is None else f"{value:.2f}{kept}")
            lines.append(f"| {concurrency} stream(s) | " + " | ".join(cells) + " |")
        lines.append(_lookups(result, plain))
        lines.append("")
    return "\n".join(lines) + "\n"


def _lookups(result: dict[str, Any], plain: str) -> str:
    """The 1-stream speculation-cache figures per round trip: what spared the target the wire
    (hits) and the misses it did not wait for."""
    cells = []
    for system in result["systems"]:
        name, rtt = unlinked(system["name"])
        if name == plain and system.get("cache_hit_rate") is not None:
            hits, skipped = system["cache_hit_rate"], system.get("skipped_wait_rate") or 0.0
            cells.append(f"{rtt or 0:g} ms: {hits:.0%} hits, {skipped:.0%} not waited for")
    return f"\n1 stream, per pipelined step: {'; '.join(cells)}." if cells else ""


def plot(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """bench-links.png in `out`: speedup against round trip, one line per system and
    concurrency. Its path as {"links_png": path}; {} without links."""
    table = speedups(result)
    if not table:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (plain, levels) in enumerate(table.items()):
        for j, (concurrency, per_rtt) in enumerate(sorted(levels.items())):
            rtts = sorted(per_rtt)
            ax.plot(
                rtts,
                [per_rtt[r] for r in rtts],
                marker="o",
                color=f"C{i}",
                linestyle=("-", "--", ":", "-.")[j % 4],
                label=f"{plain}, {concurrency} stream(s)",
            )
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("drafter round trip added by the link (ms)")
    ax.set_ylabel(f"speedup over {result['baseline']}")
    ax.set_title("Speedup against the drafters' round trip")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PNG_NAME, dpi=110)
    plt.close(fig)
    return {"links_png": out / PNG_NAME}
