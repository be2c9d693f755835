"""The API's `SpeculationMode` enum and tandem's `Mode` (tandem.speculation.protocol): the enum
names each Mode upper case, behind a prefix, and a test keeps the two equal."""

from __future__ import annotations

from tandem.protos import tandem_pb2 as pb
from tandem.speculation.protocol import Mode

PREFIX = "SPECULATION_MODE_"


def mode_of(value: int) -> Mode:
    """The Mode of a SpeculationMode value (not UNSPECIFIED)."""
    return Mode(pb.SpeculationMode.Name(value).removeprefix(PREFIX).lower())


def proto_mode(mode: str) -> int:
    """The SpeculationMode value of a mode name; ValueError for a name that is no Mode."""
    return pb.SpeculationMode.Value(PREFIX + Mode(mode).name)
