"""Prompts of the tests: the first turns of Spec-Bench's questions (benchmarks/data/spec_bench)."""

from __future__ import annotations

import json

from .layout import REPO

SPEC_BENCH = REPO / "benchmarks" / "data" / "spec_bench" / "question.jsonl"


def spec_bench_prompts(n: int, categories: tuple[str, ...] = ()) -> list[str]:
    """First turns of the first n Spec-Bench prompts (optionally of some categories only)."""
    rows = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]
    if categories:
        rows = [r for r in rows if r["category"] in categories]
    return [r["turns"][0] for r in rows[:n]]
