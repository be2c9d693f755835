"""Controlled acceptance: a measurement tool of `tandem bench`, never a drafter to serve with.

It proposes the target's own greedy continuation of the prompt (known in advance), each token
replaced by a different random token with probability 1 - alpha, so that every draft position
is accepted with probability alpha whatever the text. Drafting takes a real compute cost per
token (matrix products on this process's threads, not a sleep), so the pipeline is measured
against a drafter that competes for the machine. Comparing the speedup achieved with the ideal
one for the same alpha, k and verification cost says how close tandem's pipelining comes to it,
independently of any drafter's quality.

It is a draft source like any other (tandem.speculation.source) but no part of the service
knows it: the bench starts its measurement servers with `python -m
tandem.benchmarks.controlled_source --settings FILE serve --config CONFIG`, which registers it
under the mode name `controlled` and then runs `tandem serve` (whose config makes it the
default mode).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tandem.speculation.source import DrafterSetup, DraftSource, History

MODE = "controlled"


def load_continuations(path: str | Path) -> dict[tuple[int, ...], list[int]]:
    """A JSON list of {"prompt": [ids], "continuation": [ids]}, keyed by the prompt."""
    rows = json.loads(Path(path).read_text())
    return {tuple(r["prompt"]): list(r["continuation"]) for r in rows}


def save_continuations(
    path: str | Path, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> None:
    rows = [{"prompt": list(p), "continuation": list(c)} for p, c in pairs]
    Path(path).write_text(json.dumps(rows))


class Burner:
    """Spends wall time on real arithmetic: products of a small matrix until the time is up."""

    def __init__(self, size: int = 64) -> None:
        self.matrix = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)

    def spend(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        x = self.matrix
        while time.perf_counter() < end:
            x = np.tanh(x @ self.matrix)


class ControlledSource(DraftSource):
    """Drafts the known continuation, each token corrupted with probability 1 - alpha."""

    name = MODE

    def __init__(
        self,
        continuations: Mapping[tuple[int, ...], Sequence[int]],
        alpha: float,
        cost_ms: float,
        vocab_size: int,
        seed: int = 0,
    ) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.continuations = continuations
        self.alpha = alpha
        self.cost_s = cost_ms / 1000
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)
        self.burner = Burner()

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        """The continuation after the request's committed tokens (and `extra`); empty for an
        unknown prompt or once the output has left the continuation."""
        tokens, prompt_len = [*history.tokens, *extra], history.prompt_len
        truth = self.continuations.get(tuple(tokens[:prompt_len]))
        if truth is None or k <= 0:
            return []
        done = len(tokens) - prompt_len
        if list(tokens[prompt_len:]) != list(truth[:done]):
            return []
        draft = [self._corrupt(t) for t in truth[done : done + k]]
        self.burner.spend(self.cost_s * len(draft))
        return draft

    def _corrupt(self, token: int) -> int:
        if self.rng.random() < self.alpha:
            return int(token)
        other = int(self.rng.integers(self.vocab_size - 1))
        return other + (other >= token)  # uniform over every token but the true one


@dataclass(frozen=True)
class ControlledSettings:
    """The measurement's settings, written by the bench for its server (`--settings FILE`)."""

    continuations: str  # JSON of save_continuations
    alpha: float
    cost_ms: float = 0.0  # real compute per drafted token
    seed: int = 0

    def build(self, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> ControlledSource:
        """The source factory (tandem.speculation.registry.SourceFactory)."""
        continuations = load_continuations(self.continuations)
        return ControlledSource(
            continuations, self.alpha, self.cost_ms, setup.vocab_size, self.seed
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))


def main(argv: list[str] | None = None) -> int:
    """`--settings FILE serve --config CONFIG`: `tandem serve` with this source registered (the
    command line the launcher gives tandem's own CLI, benchmarks/launcher.py)."""
    from tandem.cluster.config.deployment import TandemConfig
    from tandem.cluster.frontdoor.service import announcer, run_service
    from tandem.speculation import registry

    parser = argparse.ArgumentParser(prog="controlled_source")
    parser.add_argument("--settings", required=True)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    settings = ControlledSettings(**json.loads(Path(args.settings).read_text()))
    registry.register(MODE, settings.build)
    config = TandemConfig.from_yaml(args.config)
    run_service(config, on_ready=announcer(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
