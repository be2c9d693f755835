"""The Transport of a speculation session over Ray: drafter actor calls with a time budget.

A call that misses its budget is not a fault (a loaded drafter is late, not broken): its result
is dropped, and the replica is `busy` until the late call returns, so the session sends it
nothing new and no step waits for it meanwhile. A hung replica (a stopped process) costs one
budget, then nothing, and drafts again as soon as it answers.
"""

from __future__ import annotations

from typing import Any

import ray

from tandem.speculation.protocol import (
    DraftItem,
    DraftReply,
    Hint,
    PredraftPlan,
    PredraftReply,
)


class DraftTimeout(TimeoutError):
    """A drafter call that missed the step's time budget."""


class RayTransport:
    def __init__(self, drafters: list[Any]) -> None:
        self.drafters = drafters
        self.replicas = len(drafters)
        self._probes: dict[int, Any] = {}
        self._late: dict[int, Any] = {}  # replica -> its call that missed the budget

    def busy(self, replica: int) -> bool:
        late = self._late.get(replica)
        if late is None:
            return False
        ready, _ = ray.wait([late], timeout=0)
        if ready:
            del self._late[replica]
        return not ready

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        refs = {
            replica: self.drafters[replica].draft.remote(items)
            for replica, items in batches.items()
        }
        return self._wait(refs, timeout_s)

    def predraft(self, batches: dict[int, list[DraftItem]], plan: PredraftPlan) -> dict[int, Any]:
        return {
            replica: self.drafters[replica].predraft.remote(items, plan)
            for replica, items in batches.items()
        }

    def collect(
        self, handle: dict[int, Any], timeout_s: float
    ) -> dict[int, list[PredraftReply] | Exception]:
        return self._wait(handle, timeout_s)

    def _wait(self, refs: dict[int, Any], timeout_s: float) -> dict[int, Any]:
        """Each replica's result, or the exception that stands for its failure or lateness."""
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        ready = set(ready)
        results: dict[int, Any] = {}
        for replica, ref in refs.items():
            if ref not in ready:
                self._late[replica] = ref
                results[replica] = DraftTimeout(
                    f"drafter {replica} missed {timeout_s * 1e3:.0f} ms"
                )
                continue
            try:
                results[replica] = ray.get(ref)
            except Exception as exc:  # a dead or failing drafter: no drafts this step
                results[replica] = exc
        return results

    def hint(self, replica: int, hints: dict[str, Hint]) -> None:
        self.drafters[replica].hint.remote(hints)

    def free(self, replica: int, request_ids: list[str]) -> None:
        self.drafters[replica].free.remote(request_ids)

    def probe(self, replica: int) -> bool:
        probe = self._probes.get(replica)
        if probe is None:
            self._probes[replica] = self.drafters[replica].ping.remote()
            return False
        ready, _ = ray.wait([probe], timeout=0)
        if not ready:
            return False
        del self._probes[replica]
        try:
            ray.get(probe)
        except Exception:  # still dead (or restarting): probe again next step
            return False
        return True
