"""The training prompt set: deterministic from its seed, growing without changing what it had,
and sharing no phrase with Spec-Bench (the evaluation set must never leak into training)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tandem.training.data import Example
from tandem.training.prompts import FOLLOW_UPS, STAGE_TWO, stage_one, stage_three, stage_two
from tandem.training.train import draft_vocabulary
from tests.support.prompts import SPEC_BENCH


@pytest.mark.timeout(60)
def test_prompts_are_deterministic_and_grow_as_a_prefix():
    assert stage_one(0, 300) == stage_one(0, 300)
    assert stage_one(0, 300)[:120] == stage_one(0, 120)
    assert stage_one(0, 50) != stage_one(1, 50)
    texts = [p.text for p in stage_one(0, 2000)]
    assert len(set(texts)) == 2000
    assert len({p.category for p in stage_one(0, 2000)}) == 10


@pytest.mark.timeout(60)
def test_stage_two_builds_passage_tasks_from_answers():
    article = (
        "Honeybees live in colonies of up to 60000 workers. Each colony has one queen, who lays "
        "all the eggs. Workers collect nectar and pollen from flowers and turn the nectar into "
        "honey, which feeds the colony through the winter."
    )
    tasks = stage_two(0, [("00001", article), ("00002", "Too short.")])
    assert [t.id for t in tasks] == ["s2-00001"]
    assert any(s in tasks[0].text for s in (article, "Honeybees", "colony"))


@pytest.mark.timeout(60)
def test_stage_three_is_a_second_turn_on_the_first_conversation():
    first = stage_one(0, 3)
    answers = [(first[0], "An answer.  "), (first[1], "  "), (first[2], "Another answer.")]
    follow_ups = stage_three(0, answers)
    assert [t.id for t in follow_ups] == ["s3-00000", "s3-00002"]  # empty answers are skipped
    assert follow_ups[0].turns == (first[0].text, "An answer.", follow_ups[0].text)
    assert follow_ups[0].category == "multiturn" and follow_ups == stage_three(0, answers)


def _ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@pytest.mark.timeout(60)
def test_no_phrase_of_spec_bench_is_in_the_prompt_set():
    bench = set()
    for line in SPEC_BENCH.read_text().splitlines():
        if line.strip():
            for turn in json.loads(line)["turns"]:
                bench |= _ngrams(turn)
    ours = set()
    for prompt in stage_one(0, 2000):
        ours |= _ngrams(prompt.text)
    for templates in [*STAGE_TWO.values(), *FOLLOW_UPS.values()]:
        for template in templates:
            ours |= _ngrams(re.sub(r"\{\w+\}", " ", template))
    assert len(bench) > 10000 and len(ours) > 1000
    assert not ours & bench


@pytest.mark.timeout(60)
def test_draft_vocabulary_is_the_targets_choices_then_bpe_rank():
    def example(greedy):
        t = torch.tensor(greedy)
        return Example("s1-00001", t, None, None, None, t, 0)

    vocab = draft_vocabulary([example([50, 50, 50, 7, 7, 90]), example([7, 90, 90, 3])], 6)
    # 7 and 90 (3 each), 50 (3), 3 (1); then the lowest ids not chosen yet: 0 and 1
    assert vocab.tolist() == [0, 1, 3, 7, 50, 90]
    assert draft_vocabulary([example([9, 9, 4])], 1).tolist() == [9]


@pytest.mark.timeout(60)
def test_a_recipe_without_soft_labels_is_refused():
    from tandem.training.data import DataRecipe

    with pytest.raises(ValueError, match="top_k must be at least 1"):
        DataRecipe("target", top_k=0)
