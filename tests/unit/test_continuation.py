"""A request moved to another target replica after its own died (cluster/frontdoor/coordinator.py,
`_Run`): before its first token it is submitted again as it was; after, as its continuation:
the prompt followed by the delivered tokens, the limits less them, no prompt log-probabilities
again; a grammar-constrained one cannot move once it has output."""

from __future__ import annotations

import pytest

from tandem.cluster.frontdoor.coordinator import _Run
from tandem.cluster.transport.messages import PreparedRequest, StepOutput

pytestmark = pytest.mark.timeout(60)


def _run(**sampling) -> _Run:
    prepared = PreparedRequest("r", [1, 2, 3], {"max_tokens": 10, **sampling}, "ngram", 4)
    return _Run(prepared, start=0.0)


def test_before_any_token_the_request_is_submitted_as_it_was():
    run = _run(min_tokens=4, prompt_logprobs=1)
    assert run.resumable() and run.submitted() is run.prepared


def test_after_tokens_it_continues_from_them():
    run = _run(min_tokens=4, prompt_logprobs=1, seed=7)
    run.chunk(StepOutput("r#1", [5, 6], "ab"), now=1.0)
    run.chunk(StepOutput("r#1", [7], "c"), now=2.0)
    moved = run.submitted()
    assert run.resumable()
    assert moved.prompt_token_ids == [1, 2, 3, 5, 6, 7]
    assert moved.sampling == {"max_tokens": 7, "min_tokens": 1, "seed": 7}
    assert (moved.mode, moved.num_speculative_tokens) == ("ngram", 4)
    assert run.prepared.prompt_token_ids == [1, 2, 3]  # usage still counts the client's prompt
    assert run.chunk(StepOutput("r#2", [8], "d", "length"), now=3.0).completion_tokens == 4


def test_a_grammar_constrained_request_moves_only_before_its_first_token():
    run = _run(structured_outputs={"choice": ["yes", "no"]})
    assert run.resumable()
    run.chunk(StepOutput("r#1", [5], "y"), now=1.0)
    assert not run.resumable()
