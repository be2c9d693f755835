"""The proposer-drafter wire format: msgpack, versioned, generic over the protocol's dataclasses.

Every message between a target's proposer and a drafter replica is one msgpack array
`[WIRE_VERSION, kind, seq, body]` (as vLLM's engine IPC does, no pickled Python objects, so it can
cross nodes and languages and cannot run code on the receiver). The body is made of msgpack's own
types plus two extension types:

- a dataclass listed in `tandem.speculation.protocol.WIRE_TYPES`: ext code `FIRST_TYPE_CODE + its
  position in that tuple`, holding the array of its field values in declaration order. A decoder
  fills fields missing at the end with their defaults and ignores extra ones, so a field appended
  with a default (say an EAGLE-3 feature vector on DraftItem) needs no change here and both sides
  of a rolling upgrade still read each other. Reordering fields or types is a new WIRE_VERSION.
- a numpy array: ext code `NDARRAY_CODE`, holding `[dtype, shape, raw bytes]` (C order). It
  decodes as a read-only array over the message's bytes, without a copy.

Arrays decode as tuples (the protocol's dataclasses hold tuples) and map keys may be arrays (an
`Outcome` is a tuple).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

from tandem.speculation.protocol import WIRE_TYPES

WIRE_VERSION = 1
NDARRAY_CODE = 1
FIRST_TYPE_CODE = 16


class Kind(IntEnum):
    """What a message asks for, and what its body holds (the reply has the same kind and seq)."""

    PING = 1  # None -> None: is the drafter's socket reachable
    DRAFT = 2  # list[DraftItem] -> list[DraftReply]
    PREDRAFT = 3  # (list[DraftItem], PredraftPlan) -> list[PredraftReply]
    HINT = 4  # dict[str, Hint], no reply (Mirror-SD, delivered while a pre-draft runs)
    FREE = 5  # list[str] of request ids, no reply
    ERROR = 6  # reply only: the drafter failed the message; the body says why
    # int replica -> [address, password] or None (not known yet): where a drafter listens, asked
    # of the target actor's directory by the engine's worker (tandem.cluster.transport.directory)
    LOCATE = 7

    @property
    def answered(self) -> bool:
        return self in (Kind.PING, Kind.DRAFT, Kind.PREDRAFT, Kind.LOCATE)


class WireError(ValueError):
    """A message this side cannot read (another wire version, or not a tandem message)."""


class Codec:
    """Encodes and decodes messages over a fixed list of dataclass types."""

    def __init__(self, types: Sequence[type]) -> None:
        self._codes = {cls: FIRST_TYPE_CODE + i for i, cls in enumerate(types)}
        self._types = {code: cls for cls, code in self._codes.items()}
        self._fields = {
            cls: tuple(f.name for f in dataclasses.fields(cls) if f.init) for cls in types
        }

    def encode(self, kind: int, seq: int, body: Any) -> bytes:
        return msgpack.packb([WIRE_VERSION, kind, seq, body], default=self._default)

    def decode(self, data: bytes) -> tuple[int, int, Any]:
        """(kind, seq, body) of a message."""
        try:
            message = self._unpack(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise WireError(f"not a tandem wire message: {exc}") from None
        if not isinstance(message, tuple) or len(message) != 4:
            raise WireError("not a tandem wire message")
        version, kind, seq, body = message
        if version != WIRE_VERSION:
            raise WireError(f"wire version {version}; this side speaks {WIRE_VERSION}")
        return kind, seq, body

    def _default(self, obj: Any) -> Any:
        code = self._codes.get(type(obj))
        if code is not None:
            values = [getattr(obj, name) for name in self._fields[type(obj)]]
            return msgpack.ExtType(code, msgpack.packb(values, default=self._default))
        if isinstance(obj, np.ndarray):
            array = np.ascontiguousarray(obj)
            header = [array.dtype.str, list(array.shape), array.data]
            return msgpack.ExtType(NDARRAY_CODE, msgpack.packb(header))
        if isinstance(obj, np.generic):  # a numpy scalar, e.g. a token id read from an array
            return obj.item()
        raise TypeError(f"the wire format has no encoding for {type(obj).__name__}")

    def _unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(
            data, use_list=False, strict_map_key=False, ext_hook=self._ext, raw=False
        )

    def _ext(self, code: int, data: bytes) -> Any:
        if code == NDARRAY_CODE:
            dtype, shape, raw = msgpack.unpackb(data, use_list=False)
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
        cls = self._types.get(code)
        if cls is None:
            raise WireError(f"unknown wire type code {code}")
        values = self._unpack(data)
        return cls(*values[: len(self._fields[cls])])


CODEC = Codec(WIRE_TYPES)  # the proposer-drafter messages
