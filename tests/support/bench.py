"""Bench records made by hand for the bench's unit tests."""

from __future__ import annotations

from tandem.benchmarks.records import RequestRecord


def record(system, qid, category, tokens, wall, **kw) -> RequestRecord:
    """A request of 10 prompt tokens that generated `tokens` in `wall` seconds."""
    return RequestRecord(system, qid, category, 10, list(tokens), wall, **kw)
