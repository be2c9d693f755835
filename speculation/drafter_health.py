"""Which drafter replicas the session calls this step. A drafter that errs is marked down: its
requests get no drafts (decoding goes on without speculation) until a probe shows it answers
again. A drafter that misses the step's time budget is late, not broken (a loaded machine): the
transport keeps it `busy` until the late call returns, and it drafts again right after.
"""

from __future__ import annotations

from typing import Any

from tandem.speculation.draft_transport import Transport


class DrafterHealth:
    """The drafter replicas that are down, and the failed and late calls so far. Not locked:
    the session calls it with its lock held."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.down: set[int] = set()
        self.failures = 0  # calls that failed (an error, a dead drafter)
        self.timeouts = 0  # calls that missed the time budget (not faults)

    def skipped(self) -> set[int]:
        """The replicas to leave out of this step's calls: down, or still busy with a late one."""
        busy = {r for r in range(self.transport.replicas) if self.transport.busy(r)}
        return self.down | busy

    def failed(self, replica: int, result: Any) -> bool:
        """A failed or late drafter call. A late one is counted (the transport keeps the replica
        busy until it returns); a failed one also marks the replica down until a probe answers."""
        if not isinstance(result, Exception):
            return False
        if isinstance(result, TimeoutError):
            self.timeouts += 1
        else:
            self.failures += 1
            self.down.add(replica)
        return True

    def revive(self) -> list[int]:
        """Probe the replicas that are down; returns those that answer again (they may have
        restarted empty: their requests must be sent from the start)."""
        back = [replica for replica in self.down if self.transport.probe(replica)]
        self.down.difference_update(back)
        return back
