"""The draft-source contract: the one shape every drafter has.

A *draft source* proposes tokens that continue a request's committed tokens (its prompt and the
output the target has accepted). The drafter (tandem.speculation.drafter) mirrors each request
in a `History` and calls every source through four methods:

- `observe(history, new, candidates)`: committed tokens arrived for a request, whatever its mode
  (a source that learns across requests, like Token Recycling's table, learns from all of
  them), with the target's top candidates at the positions it verified since the last call.
  Called after both were added to `history`.
- `propose(history, extra, k)`: up to k tokens that follow `history.tokens + extra`. `extra` is
  uncommitted: the block the target is verifying now, when the speculation cache pre-drafts the
  block after it. A shorter or empty draft is always allowed (the target then decodes alone).
  Drafts are never committed, so a source never rolls anything back: what it caches must be
  checked against `history.tokens` on the next call (see model_drafter's cropped KV cache).
- `propose_batch(jobs)`: several proposals at once. The default calls `propose` for each; a
  source whose cost is one forward pass (a draft model) overrides it to batch them.
- `release(history)`: the request finished or was evicted.

A draft is a list of token ids. A source composed of others (`auto`) returns each as a `Draft`,
which names the source that drafted it, so that every source's drafted and accepted tokens are
counted whichever mode asked (the drafter names a plain list by its mode).

A source keeps per-request state in `history.state[name]`, never in `history.tokens`.
Sources are built once per drafter replica by the factory registered for their mode
(tandem.speculation.registry) from a `DrafterSetup`; a factory returns None when the setup
lacks what the source needs (e.g. no draft model), and the mode is then not offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.speculation.candidates import Candidates
from tandem.speculation.settings import SpeculationConfig


@dataclass
class History:
    """What a drafter holds of one request."""

    request_id: str
    tokens: list[int] = field(default_factory=list)  # committed: prompt, then accepted output
    # Where the output starts. After a resync (the drafter lost the request) the whole history
    # arrives as if it were prompt, so the output of such a request is not known as output.
    prompt_len: int = 0
    # The target's latest top candidates after each token of this request (from the
    # candidates tap): the speculation cache's guesses where a draft is rejected.
    candidates: dict[int, tuple[int, ...]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # each source's own, by source name
    # The target's features (feature modes) not yet taken by a source: (first position, rows).
    features: list[tuple[int, Any]] = field(default_factory=list)

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]


class Draft(list[int]):
    """Draft tokens and the source that drafted them (a mode's own, or the one `auto` chose)."""

    def __init__(self, tokens: Iterable[int] = (), source: str = "") -> None:
        super().__init__(tokens)
        self.source = source


@dataclass(frozen=True)
class DraftJob:
    """One proposal asked of a source: up to k tokens after history.tokens + extra."""

    history: History
    extra: tuple[int, ...]
    k: int


class DraftSource:
    """Base of every draft source; see the module docstring for the contract."""

    name: str = ""  # the mode it serves (tandem.speculation.protocol.Mode, or a registered name)

    def observe(self, history: History, new: Sequence[int], candidates: Candidates) -> None:
        """Committed tokens arrived (default: nothing to learn)."""

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        raise NotImplementedError

    def propose_batch(self, jobs: Sequence[DraftJob]) -> list[list[int]]:
        return [self.propose(job.history, job.extra, job.k) for job in jobs]

    def release(self, history: History) -> None:
        """The request is gone (default: its state goes with its History)."""


@dataclass(frozen=True)
class DrafterSetup:
    """What a source factory builds from: the speculation config, whole, and what the
    coordinator resolved for it (model folders, the target's vocabulary) or the drafter
    actor found (its torch devices)."""

    config: SpeculationConfig
    vocab_size: int  # the target's
    draft_model: Path | None = None  # the draft LM's folder (drafters.model, or derived)
    eagle_head: Path | None = None  # an EAGLE-3 head for the target (drafters.eagle_head)
    target: Path | None = None  # the target's folder (the head shares its token embedding)
    devices: tuple[str, ...] = ("cpu",)  # torch devices of the draft model


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share: how much of a draft, or of a cache built
    on one, still holds against the committed tokens."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
