"""The session's one dependency on how messages travel: a `Transport` takes each drafter replica
its batch and brings the replies back. The cluster's sockets implement it
(tandem.cluster.transport.draft_pool); tests implement it in-process, so the session is tested
without Ray or sockets.
"""

from __future__ import annotations

from typing import Any, Protocol

from tandem.speculation.protocol import DraftItem, DraftReply, Hint, PredraftPlan, PredraftReply


class Transport(Protocol):
    """How draft batches reach the drafter replicas."""

    replicas: int

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        """Send every replica its batch at once; a replica's entry is an exception on failure,
        a TimeoutError when it missed timeout_s."""
        ...

    def free(self, replica: int, request_ids: list[str]) -> None:
        """Drop requests' state on a replica (fire and forget)."""
        ...

    def probe(self, replica: int) -> bool:
        """Non-blocking health probe: True once the replica answers again."""
        ...

    def busy(self, replica: int) -> bool:
        """True while a call to the replica that missed its time budget still runs."""
        ...

    def predraft(self, batches: dict[int, list[DraftItem]], plan: PredraftPlan) -> Any:
        """Start pre-drafting (asynchronously); returns a handle for `collect`."""
        ...

    def collect(self, handle: Any, timeout_s: float) -> dict[int, list[PredraftReply] | Exception]:
        """The pre-drafted blocks of a `predraft` call, waiting at most timeout_s."""
        ...

    def traffic(self) -> Any:
        """What the messages cost so far, in the transport's own terms (for the stats)."""
        ...

    def hint(self, replica: int, hints: dict[str, Hint]) -> None:
        """Deliver Mirror-SD hints (fire and forget: the target's forward pass goes on)."""
        ...
