"""Messages between the target's proposer and the drafters (one batch per engine step).

The drafter mirrors each request's committed tokens (prompt plus accepted output). The proposer
sends only what the drafter lacks, from `start`; a drafter that lost a request (restarted, or
evicted it) answers `known=False` and the proposer resends the whole history next step.
Drafts are never committed, so "rolling back" rejected drafts needs no message at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    """Which drafter serves a request: the one list of tandem's modes. The config's accepted
    values, the CLI's choices, the OpenAI extra field and the gRPC enum (a test keeps
    `SpeculationMode` equal to it) all come from here; each mode but `off` has its draft source
    registered in tandem.speculation.registry, with what it needs."""

    OFF = "off"  # the target alone
    NGRAM = "ngram"  # prompt lookup over the request's own tokens
    SUFFIX = "suffix"  # SuffixDecoding: suffix tries over this request and recent outputs
    RECYCLE = "recycle"  # Token Recycling: chains through the target's own top candidates
    MODEL = "model"  # a small causal LM with its own KV cache per request
    HYBRID = "hybrid"  # ngram when it finds a match, the model otherwise
    EAGLE = "eagle"  # an EAGLE-3 head reading the target's own hidden states
    AUTO = "auto"  # per step, the source above with the most expected tokens per target time


@dataclass(frozen=True)
class DraftItem:
    request_id: str
    start: int  # position of tokens[0] in the request's committed sequence
    tokens: tuple[int, ...]  # committed tokens from `start` on
    draft_length: int  # how many tokens to draft (this step's, tandem.speculation.policy)
    mode: str  # a Mode, or the name of a source registered from outside (the bench's)
    # The target's top candidates seen while verifying this request's last block: (input token,
    # candidate next tokens, best first) per verified position. Token Recycling's table feeds on it.
    candidates: tuple[tuple[int, tuple[int, ...]], ...] = ()
    # Pre-drafting only: the block the target is verifying now (speculation cache).
    block: tuple[int, ...] = ()
    # Feature modes (EAGLE-3): the target's auxiliary hidden states at committed positions
    # features_start.. (numpy float16, [rows, aux layers * hidden]), sent once, like tokens.
    features: Any = None
    features_start: int = 0
    # With the int8 feature encoding: the features' per-block scales (tandem.speculation.
    # feature_codec); None: the features are float16 rows.
    feature_scales: Any = None


@dataclass(frozen=True)
class DraftReply:
    request_id: str
    tokens: tuple[int, ...]  # the draft (may be shorter than k, or empty)
    known: bool = True  # False: the drafter lacks this request's history; resend it all
    source: str = ""  # the source that drafted it (a mode's own, or the one `auto` chose)
    # How long the drafter worked on the batch this reply came in: the rest of the round trip
    # is the wire (the link a pre-draft's budget must leave room for).
    drafting_s: float = 0.0


# A verification outcome: (drafts the target accepts, the token it emits after them).
Outcome = tuple[int, int]


@dataclass(frozen=True)
class PredraftReply:
    """The speculation cache entries for one request: the next block for each outcome of the
    block under verification that the drafter had the budget to pre-draft."""

    request_id: str
    blocks: dict[Outcome, tuple[int, ...]]
    known: bool = True
    sources: dict[Outcome, str] = field(default_factory=dict)  # who drafted each block


@dataclass(frozen=True)
class Hint:
    """Mirror-SD's correction channel: the target's early-exit top-κ tokens at each position of
    the block it is verifying (the token after the block's predecessor, then after each draft),
    sent mid-forward so the drafter can choose which outcomes to pre-draft."""

    block: tuple[int, ...]
    top: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class PredraftPlan:
    """The speculation cache's budget per request and step."""

    outcomes: int  # verification outcomes pre-drafted at most
    fanout: int  # guesses per rejected position for the token the target emits there
    time_s: float  # stop pre-drafting after this long (the target's verification, measured)
    await_hint: bool = False  # wait (within time_s) for the block's Mirror-SD hint


# The dataclasses of the wire format (tandem.speculation.wire), by position: append new types at
# the end, and new fields at the end of a type with a default, and both sides keep reading each
# other; anything else changes wire.WIRE_VERSION.
WIRE_TYPES = (DraftItem, DraftReply, PredraftReply, PredraftPlan, Hint)
