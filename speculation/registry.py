"""Which draft source serves which mode: one registration line per source.

Every drafter replica builds its sources from these factories, in this order (a source may use
those built before it, as hybrid uses ngram and model). A factory returns None when the setup
lacks what its source needs; that mode is then not offered. Sources from outside tandem's own
(the benchmark's controlled-acceptance tool) join through `register` in the process that starts
the service, which hands the factories to its drafter actors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tandem.speculation.auto import AutoSource
from tandem.speculation.easyspec import build_model_drafter
from tandem.speculation.hybrid import HybridSource
from tandem.speculation.ngram import NgramSource
from tandem.speculation.protocol import Mode
from tandem.speculation.recycle import RecycleSource
from tandem.speculation.settings import DrafterConfig
from tandem.speculation.source import DrafterSetup, DraftSource
from tandem.speculation.suffix import SuffixSource

SourceFactory = Callable[[DrafterSetup, Mapping[str, DraftSource]], DraftSource | None]


@dataclass(frozen=True)
class Needs:
    """What a source needs beyond the request's tokens: the config offers its mode only when a
    drafter can have it."""

    draft_model: bool = False  # a small causal LM (drafters.model, or derived from the target)
    features: bool = False  # the target's hidden states, sent with the committed tokens (EAGLE-3)
    # Drafts better with the target's hidden states where the deployment has an EAGLE-3 head,
    # and without them elsewhere (auto).
    reads_features: bool = False

    @property
    def wants_features(self) -> bool:
        return self.features or self.reads_features


def _eagle(setup: DrafterSetup, built: Mapping[str, DraftSource]) -> DraftSource | None:
    """EagleDrafter.build, imported on use: the head's module imports torch, which a process
    that only validates configs or names modes should not pay for."""
    from tandem.speculation.eagle import EagleDrafter

    return EagleDrafter.build(setup, built)


_FACTORIES: dict[str, SourceFactory] = {
    Mode.NGRAM: NgramSource.build,
    Mode.SUFFIX: SuffixSource.build,
    Mode.RECYCLE: RecycleSource.build,
    Mode.MODEL: build_model_drafter,
    Mode.HYBRID: HybridSource.build,
    Mode.EAGLE: _eagle,
    Mode.AUTO: AutoSource.build,  # last: it composes those built before it
}
_NEEDS: dict[str, Needs] = {
    Mode.MODEL: Needs(draft_model=True),
    Mode.HYBRID: Needs(draft_model=True),
    Mode.EAGLE: Needs(features=True),
    Mode.AUTO: Needs(reads_features=True),
}


def register(name: str, factory: SourceFactory, needs: Needs | None = None) -> None:
    """Add a draft source under a mode name of its own (tandem's modes cannot be replaced)."""
    if name in set(Mode):
        raise ValueError(f"{name!r} is one of tandem's own modes")
    _FACTORIES[name] = factory
    _NEEDS[name] = needs or Needs()


def needs(mode: str) -> Needs:
    return _NEEDS.get(mode, Needs())


def offered(mode: str, drafters: DrafterConfig) -> bool:
    """Whether drafters configured so can serve a mode, as far as the config tells (an "auto"
    EAGLE-3 head exists only for targets tandem ships one for; the drafters confirm)."""
    need = needs(mode)
    if need.draft_model and not drafters.has_model():
        return False
    return not need.features or drafters.eagle_head is not None


def factories() -> dict[str, SourceFactory]:
    return dict(_FACTORIES)


def mode_names() -> list[str]:
    """Every mode a request or config may name: `off` and each registered source."""
    return [Mode.OFF.value, *_FACTORIES]


def build_sources(
    setup: DrafterSetup, factories: Mapping[str, SourceFactory]
) -> dict[str, DraftSource]:
    built: dict[str, DraftSource] = {}
    for name, factory in factories.items():
        source = factory(setup, built)
        if source is not None:
            built[name] = source
    return built
