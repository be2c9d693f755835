"""The workload: Spec-Bench questions (or any JSONL file in their format), turned into token ids.

Every system gets the same token ids, rendered once here with the target's own tokenizer exactly
the way the tandem server renders a chat request, so the systems are compared on identical input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data" / "spec_bench"
DEFAULT_PROMPTS = DATA_DIR / "question.jsonl"


class WorkloadError(ValueError):
    """A prompt file or a selection that cannot be used; the message says where."""


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]


@dataclass(frozen=True)
class Prompt:
    """One question, ready for the engines: the first turn rendered into token ids."""

    question_id: int | str
    category: str
    text: str
    token_ids: tuple[int, ...]


def load_questions(path: str | Path = DEFAULT_PROMPTS) -> list[Question]:
    """Read a JSONL file of {question_id, category, turns}; errors name the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorkloadError(f"cannot read prompts {path}: {exc}") from None
    questions: list[Question] = []
    seen: dict[int | str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        question = _parse(line, f"{path}:{number}")
        if question.question_id in seen:
            raise WorkloadError(
                f"{path}:{number}: question_id {question.question_id!r} already on line "
                f"{seen[question.question_id]}; ids must be unique"
            )
        seen[question.question_id] = number
        questions.append(question)
    if not questions:
        raise WorkloadError(f"{path}: no questions")
    return questions


def _parse(line: str, where: str) -> Question:
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{where}: not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise WorkloadError(f"{where}: expected an object")
    missing = [key for key in ("question_id", "category", "turns") if key not in row]
    if missing:
        raise WorkloadError(f"{where}: missing {', '.join(missing)}")
    turns = row["turns"]
    if not (isinstance(turns, list) and turns and all(isinstance(t, str) and t for t in turns)):
        raise WorkloadError(f"{where}: turns must be a non-empty list of non-empty strings")
    return Question(row["question_id"], str(row["category"]), tuple(turns))


def categories(questions: Iterable[Question]) -> list[str]:
    """Categories in order of first appearance."""
    return list(dict.fromkeys(q.category for q in questions))


def select(
    questions: Sequence[Question],
    only: Sequence[str] | None = None,
    per_category: int | None = None,
    limit: int | None = None,
) -> list[Question]:
    """The first `per_category` questions of each wanted category, interleaved category by
    category (so a `limit` still spans categories), then at most `limit` of them."""
    known = categories(questions)
    wanted = list(only) if only else known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise WorkloadError(
            f"unknown categories: {', '.join(unknown)}; the file has {', '.join(known)}"
        )
    by_category = {c: [q for q in questions if q.category == c] for c in wanted}
    if per_category is not None:
        by_category = {c: qs[:per_category] for c, qs in by_category.items()}
    rounds = max((len(qs) for qs in by_category.values()), default=0)
    chosen = [qs[i] for i in range(rounds) for qs in by_category.values() if i < len(qs)]
    return chosen[:limit] if limit is not None else chosen


def render(question: Question, tokenizer: Any, chat: bool = True) -> Prompt:
    """The first turn as token ids: chat-templated like the server's chat path, or raw text
    tokenized like its text path."""
    text = question.turns[0]
    if chat:
        messages = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer.encode(rendered, add_special_tokens=False)
    else:
        ids = tokenizer.encode(text)
    return Prompt(question.question_id, question.category, text, tuple(ids))


def fitting(
    prompts: Sequence[Prompt], max_model_len: int, max_new_tokens: int
) -> tuple[list[Prompt], list[Prompt]]:
    """Split prompts into those whose prompt plus new tokens fit the context, and the rest."""
    keep, drop = [], []
    for prompt in prompts:
        (keep if len(prompt.token_ids) + max_new_tokens <= max_model_len else drop).append(prompt)
    return keep, drop
